"""ResNet-18/50 backbones (torchvision, untrained) with optional Sobel input and a CIFAR stem."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from deepcluster.models.backbone import Backbone, TapStage, check_input_size

MIN_SIZE = 16
SMALL_STEM_MAX_SIZE = 96
DEPTHS: tuple[int, ...] = (18, 50)


class ResNetBackbone(Backbone):
    """torchvision ResNet-18 or -50 (``weights=None``, torchvision init) without its ``fc`` layer.

    ``forward`` returns the global-average-pooled feature (512 for ResNet-18, 2048 for ResNet-50).
    For ``input_size <= 96`` the stem is the usual CIFAR one (3x3 stride-1 conv1, no max-pool); above, the
    standard 7x7 stride-2 conv1 and max-pool. With Sobel, conv1 takes 2 channels. Submodule names follow
    torchvision (``conv1``, ``bn1``, ``layer1`` ...). Taps: ``conv1`` (stem ReLU, before the max-pool),
    ``layer1`` .. ``layer4``.
    """

    def __init__(self, depth: int = 18, sobel: bool = True, input_size: int = 224) -> None:
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {list(DEPTHS)}, got {depth!r}")
        arch = f"resnet{depth}"
        check_input_size(arch, input_size, MIN_SIZE)
        super().__init__(arch, input_size, sobel)
        builder = torchvision.models.resnet18 if depth == 18 else torchvision.models.resnet50
        net = builder(weights=None)
        self.feature_dim = net.fc.in_features
        small_stem = input_size <= SMALL_STEM_MAX_SIZE
        if small_stem:
            self.conv1 = nn.Conv2d(self.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(self.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool: nn.Module = nn.Identity() if small_stem else net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.avgpool = net.avgpool

    def tap_stages(self) -> list[TapStage]:
        return [
            (None, self.conv1),
            (None, self.bn1),
            ("conv1", self.relu),
            (None, self.maxpool),
            ("layer1", self.layer1),
            ("layer2", self.layer2),
            ("layer3", self.layer3),
            ("layer4", self.layer4),
        ]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self.tap_stages():
            x = module(x)
        return torch.flatten(self.avgpool(x), 1)


def resnet18(sobel: bool = True, input_size: int = 224) -> ResNetBackbone:
    """ResNet-18 backbone (512-d output); CIFAR stem for inputs <= 96 px."""
    return ResNetBackbone(depth=18, sobel=sobel, input_size=input_size)


def resnet18_small(sobel: bool = True, input_size: int = 32) -> ResNetBackbone:
    """The CIFAR-style ResNet-18 (3x3 stride-1 stem, no max-pool) for 16-96 px inputs; it takes crops of any
    size in that range (global pooling), e.g. multi-crop's small ones."""
    check_input_size(
        "resnet18_small",
        input_size,
        MIN_SIZE,
        SMALL_STEM_MAX_SIZE,
        above_hint="; use arch 'resnet18' for larger inputs",
    )
    backbone = ResNetBackbone(depth=18, sobel=sobel, input_size=input_size)
    backbone.arch = "resnet18_small"
    return backbone


def resnet50(sobel: bool = True, input_size: int = 224) -> ResNetBackbone:
    """ResNet-50 backbone (2048-d output); CIFAR stem for inputs <= 96 px."""
    return ResNetBackbone(depth=50, sobel=sobel, input_size=input_size)
