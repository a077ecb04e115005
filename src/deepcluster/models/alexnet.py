"""AlexNet with batch norm, as used by DeepCluster, for 224 px and small (16-96 px) inputs."""

from __future__ import annotations

import torch
from torch import nn

from deepcluster.models.backbone import ConvFCBackbone, check_input_size
from deepcluster.models.init import init_deepcluster_weights

CONV_WIDTHS: tuple[int, ...] = (96, 256, 384, 384, 256)
EMBED_DIM = 4096
FULL_MIN_SIZE = 128
SMALL_MIN_SIZE = 16
SMALL_MAX_SIZE = 96
SMALL_STRIDE2_FROM = 32


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial size after a conv or pooling window with the given geometry (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def _conv_specs(small: bool, input_size: int) -> list[tuple[int, int, int, bool]]:
    """``(kernel, stride, padding, pool_after)`` of the five convs."""
    if small:
        # Stride 2 from 32 px up keeps conv3-5 at input/8 (4x4 at 32 px): a quarter of the FLOPs of stride 1,
        # which is what lets a CIFAR-size run learn in minutes on a CPU.
        stride1 = 1 if input_size < SMALL_STRIDE2_FROM else 2
        first = [(5, stride1, 2, True), (5, 1, 2, True)]
    else:
        first = [(11, 4, 2, True), (5, 1, 2, True)]
    return [*first, (3, 1, 1, False), (3, 1, 1, False), (3, 1, 1, True)]


class AlexNetBN(ConvFCBackbone):
    """DeepCluster's AlexNet: 5 conv+BN+ReLU layers, 3 max-pools, 2 FC layers.

    ``forward`` returns the second FC layer's output *before* its ReLU (the value DeepCluster clusters);
    the trainer applies ReLU and a head. Full variant (``small=False``, arch ``alexnet``, >= 128 px):
    conv1 k11 s4 p2 and MaxPool2d(3, 2), giving 256x6x6 = 9216 features at 224 px. Small variant
    (``small=True``, arch ``alexnet_small``, 16-96 px): conv1 k5 p2 with stride 1 (< 32 px) or 2 (>= 32 px)
    and MaxPool2d(3, 2, padding=1), giving 256x2x2 = 1024 at 32 px and 256x4x4 = 4096 at 64 px. The
    flattened size is computed from ``input_size``. Taps: ``conv1`` .. ``conv5`` (each conv's ReLU output,
    before pooling).
    """

    def __init__(
        self, sobel: bool = True, input_size: int = 224, small: bool = False, width: float = 1.0
    ) -> None:
        arch = "alexnet_small" if small else "alexnet"
        if small:
            check_input_size(
                arch,
                input_size,
                SMALL_MIN_SIZE,
                SMALL_MAX_SIZE,
                above_hint=f"; use arch 'alexnet' for inputs of {FULL_MIN_SIZE} px or more",
            )
        else:
            check_input_size(
                arch,
                input_size,
                FULL_MIN_SIZE,
                below_hint=f"; use arch 'alexnet_small' for {SMALL_MIN_SIZE}-{SMALL_MAX_SIZE} px inputs",
            )
        super().__init__(arch, input_size, sobel)
        self.feature_dim = EMBED_DIM
        pool_kernel, pool_stride, pool_padding = (3, 2, 1) if small else (3, 2, 0)

        layers: list[nn.Module] = []
        self.tap_index = {}
        channels, size = self.in_channels, input_size
        widths = [max(1, round(w * width)) for w in CONV_WIDTHS]
        specs = zip(_conv_specs(small, input_size), widths, strict=True)
        for i, ((kernel, stride, padding, pool_after), width) in enumerate(specs):
            layers += [
                nn.Conv2d(channels, width, kernel_size=kernel, stride=stride, padding=padding),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            self.tap_index[f"conv{i + 1}"] = len(layers) - 1
            size = conv_output_size(size, kernel, stride, padding)
            if pool_after:
                layers.append(nn.MaxPool2d(kernel_size=pool_kernel, stride=pool_stride, padding=pool_padding))
                size = conv_output_size(size, pool_kernel, pool_stride, pool_padding)
            channels = width
        self.features = nn.Sequential(*layers)
        self.flat_dim = channels * size * size
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(self.flat_dim, EMBED_DIM),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(EMBED_DIM, EMBED_DIM),
        )
        init_deepcluster_weights(self)


def alexnet_bn(sobel: bool = True, input_size: int = 224) -> AlexNetBN:
    """DeepCluster AlexNet-BN for inputs of 128 px or more (224 px in the paper)."""
    return AlexNetBN(sobel=sobel, input_size=input_size, small=False)


def alexnet_bn_small(sobel: bool = True, input_size: int = 32) -> AlexNetBN:
    """AlexNet-BN adapted to 16-96 px inputs (CIFAR, STL-10)."""
    return AlexNetBN(sobel=sobel, input_size=input_size, small=True)


class AlexNetGAP(AlexNetBN):
    """The small AlexNet's five conv layers with a global average pool in place of its FC layers: a 256-d
    embedding (conv5's channels) for any input size, so multi-crop's small crops pass at their own size, and no
    FC cost (about a fifth of the small AlexNet's FLOPs at 32 px). Taps as AlexNet's."""

    def __init__(self, sobel: bool = True, input_size: int = 32, width: float = 1.0) -> None:
        super().__init__(sobel=sobel, input_size=input_size, small=True, width=width)
        self.arch = "alexnet_small_gap"
        self.classifier = nn.Sequential()
        self.feature_dim = max(1, round(CONV_WIDTHS[-1] * width))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


def alexnet_small_gap(sobel: bool = True, input_size: int = 32, width: float = 1.0) -> AlexNetGAP:
    """The small AlexNet's conv layers with global average pooling (16-96 px, crops of any size); `width`
    scales every layer's channels (`alexnet_small_gap_half`, `_double`)."""
    network = AlexNetGAP(sobel=sobel, input_size=input_size, width=width)
    if width != 1.0:
        network.arch = {0.5: "alexnet_small_gap_half", 2.0: "alexnet_small_gap_double"}.get(
            width, network.arch
        )
    return network
