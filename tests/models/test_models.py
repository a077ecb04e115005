"""Tests for deepcluster.models: Sobel, backbones, taps, init, heads and registry."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from deepcluster.models import (
    ARCHITECTURES,
    VGG16BN,
    AlexNetBN,
    Backbone,
    ClassifierHead,
    ResNetBackbone,
    Sobel,
    build_backbone,
    default_arch_for,
    linear_head,
)

SOBEL_KEYS = ["sobel.0.weight", "sobel.0.bias", "sobel.1.weight", "sobel.1.bias"]


ModelGetter = Callable[..., Backbone]


def _seeded_input(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


@pytest.fixture(scope="module")
def models() -> ModelGetter:
    """Build each (arch, input_size, sobel) once, seeded and in eval mode; tests must not mutate them."""
    cache: dict[tuple[str, int, bool], Backbone] = {}

    def get(arch: str, size: int, sobel: bool = True) -> Backbone:
        key = (arch, size, sobel)
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = build_backbone(arch, sobel=sobel, input_size=size).eval()
        return cache[key]

    return get


# ----------------------------------------------------------------------------------------------- Sobel


def test_sobel_fixed_values_and_layout() -> None:
    sobel = Sobel()
    assert list(sobel.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert torch.allclose(sobel[0].weight, torch.full((1, 3, 1, 1), 1.0 / 3.0))
    kernel_x = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    assert torch.equal(sobel[1].weight[0, 0], kernel_x)
    assert torch.equal(sobel[1].weight[1, 0], kernel_x.t())
    assert torch.count_nonzero(sobel[0].bias) == 0 and torch.count_nonzero(sobel[1].bias) == 0
    assert not any(p.requires_grad for p in sobel.parameters())


def test_sobel_vertical_step_edge_by_hand() -> None:
    # Left 4 columns 0, right 4 columns RGB (0.3, 0.6, 0.6): grayscale 0.5, a vertical step edge.
    image = torch.zeros(1, 3, 8, 8)
    image[0, :, :, 4:] = torch.tensor([0.3, 0.6, 0.6]).view(3, 1, 1)
    with torch.no_grad():
        out = Sobel()(image)
    assert out.shape == (1, 2, 8, 8)
    interior = out[0, :, 1:-1, 1:-1]  # columns 1..6 of rows 1..6: zero padding only affects the border
    # x response at column c = (1 + 2 + 1) * (g[c - 1] - g[c + 1]): -4 * 0.5 = -2 at columns 3 and 4, else 0.
    expected_x = torch.zeros(6, 6)
    expected_x[:, 2:4] = -2.0
    assert torch.allclose(interior[0], expected_x, atol=1e-6)
    assert torch.allclose(interior[1], torch.zeros(6, 6), atol=1e-6)


def test_sobel_constant_image_gives_zero() -> None:
    with torch.no_grad():
        out = Sobel()(torch.full((2, 3, 6, 6), 0.7))
    assert torch.allclose(out[:, :, 1:-1, 1:-1], torch.zeros(2, 2, 4, 4), atol=1e-6)


def test_sobel_stays_fixed_through_training_step() -> None:
    torch.manual_seed(0)
    model = build_backbone("alexnet_small", sobel=True, input_size=32)
    head = ClassifierHead(model.feature_dim, 5)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("sobel.")}
    assert sorted(before) == sorted(SOBEL_KEYS)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=0.1)
    loss = nn.functional.cross_entropy(head(model(_seeded_input(2, 32))), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.sobel.parameters())
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
    n_sobel = sum(1 for _ in model.sobel.parameters())
    assert len(model.trainable_parameters()) == len(list(model.parameters())) - n_sobel
    assert all(p.requires_grad for p in model.trainable_parameters())


# ------------------------------------------------------------------------------------ shapes, registry

SHAPE_CASES = [
    ("alexnet", 224, 2, AlexNetBN, 4096),
    ("alexnet_small", 32, 2, AlexNetBN, 4096),
    ("alexnet_small", 64, 2, AlexNetBN, 4096),
    ("vgg16_small", 32, 2, VGG16BN, 4096),
    ("resnet18", 32, 2, ResNetBackbone, 512),
    ("vgg16", 224, 1, VGG16BN, 4096),
    ("resnet50", 224, 1, ResNetBackbone, 2048),
]


@pytest.mark.parametrize(("arch", "size", "batch", "cls", "dim"), SHAPE_CASES)
def test_output_shape_and_interface(
    models: ModelGetter, arch: str, size: int, batch: int, cls: type, dim: int
) -> None:
    model = models(arch, size)
    assert isinstance(model, cls) and isinstance(model, Backbone)
    assert (model.arch, model.input_size, model.feature_dim) == (arch, size, dim)
    assert isinstance(model.sobel, Sobel)
    assert list(model.state_dict())[:4] == SOBEL_KEYS
    with torch.no_grad():
        out = model(_seeded_input(batch, size))
    assert out.shape == (batch, dim)
    assert torch.isfinite(out).all()


def test_registry_keys_and_flat_sizes(models: ModelGetter) -> None:
    assert set(ARCHITECTURES) == {
        "alexnet", "alexnet_small", "alexnet_small_gap", "alexnet_small_gap_half", "alexnet_small_gap_double",
        "vgg16", "vgg16_small", "resnet18", "resnet18_small", "resnet50",
    }  # fmt: skip
    half, double = models("alexnet_small_gap_half", 32), models("alexnet_small_gap_double", 32)
    assert (half.arch, half.feature_dim, double.arch, double.feature_dim) == (
        "alexnet_small_gap_half", 128, "alexnet_small_gap_double", 512,
    )  # fmt: skip
    assert half.features[0].out_channels == 48 and double.features[0].out_channels == 192
    assert models("alexnet", 224).flat_dim == 256 * 6 * 6
    assert models("alexnet_small", 32).flat_dim == 256 * 2 * 2
    assert models("alexnet_small", 16).flat_dim == 256 * 2 * 2
    assert models("alexnet_small", 64).flat_dim == 256 * 4 * 4
    assert models("vgg16_small", 32).flat_dim == 512 * 2 * 2
    assert models("vgg16", 224).flat_dim == 512 * 7 * 7


def test_without_sobel_first_conv_takes_three_channels(models: ModelGetter) -> None:
    alex = models("alexnet_small", 32, sobel=False)
    res = models("resnet18", 32, sobel=False)
    assert alex.sobel is None and res.sobel is None
    assert alex.features[0].in_channels == 3 and res.conv1.in_channels == 3
    assert not any(k.startswith("sobel.") for k in alex.state_dict())
    assert models("alexnet_small", 32).features[0].in_channels == 2
    assert models("resnet18", 32).conv1.in_channels == 2
    with torch.no_grad():
        assert alex(_seeded_input(2, 32)).shape == (2, 4096)
        assert res(_seeded_input(2, 32)).shape == (2, 512)


def test_alexnet_layer_geometry(models: ModelGetter) -> None:
    full = models("alexnet", 224)
    conv1 = full.features[0]
    assert (conv1.out_channels, conv1.kernel_size, conv1.stride) == (96, (11, 11), (4, 4))
    assert conv1.padding == (2, 2)
    widths = [m.out_channels for m in full.features if isinstance(m, nn.Conv2d)]
    assert widths == [96, 256, 384, 384, 256]
    assert sum(isinstance(m, nn.MaxPool2d) for m in full.features) == 3
    linears = [m for m in full.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(9216, 4096), (4096, 4096)]
    assert not isinstance(full.classifier[-1], nn.ReLU)
    assert models("alexnet_small", 16).features[0].stride == (1, 1)
    assert models("alexnet_small", 32).features[0].stride == (2, 2)
    assert models("alexnet_small", 64).features[0].stride == (2, 2)


def test_resnet_small_stem(models: ModelGetter) -> None:
    small = models("resnet18", 32)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    big = build_backbone("resnet18", input_size=224)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    assert not hasattr(big, "fc")


@pytest.mark.parametrize("arch", ["alexnet_small", "vgg16_small"])
def test_forward_returns_pre_relu_embedding(models: ModelGetter, arch: str) -> None:
    model = models(arch, 32)
    with torch.no_grad():
        out = model(_seeded_input(4, 32))
    assert (out < 0).any() and (out > 0).any()


# ------------------------------------------------------------------------------------------------ init


def test_conv_fc_init_statistics(models: ModelGetter) -> None:
    model = models("alexnet_small", 32)
    conv2 = model.features[4]
    assert isinstance(conv2, nn.Conv2d) and conv2.weight.numel() > 500_000
    expected = math.sqrt(2.0 / (5 * 5 * 256))
    assert conv2.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert abs(conv2.weight.mean().item()) < 0.05 * expected
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs + linears)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    assert all(torch.count_nonzero(m.bias) == 0 for m in bns)
    for linear in linears:
        assert linear.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.allclose(model.sobel[0].weight, torch.full((1, 3, 1, 1), 1.0 / 3.0))


def test_vgg_conv_init_statistics(models: ModelGetter) -> None:
    model = models("vgg16_small", 32)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    big = convs[-1]  # 512 x 512 x 3 x 3
    assert big.weight.std().item() == pytest.approx(math.sqrt(2.0 / (9 * 512)), rel=0.05)
    first = convs[0]  # small layer: 64 x 2 x 3 x 3, looser tolerance
    assert first.weight.std().item() == pytest.approx(math.sqrt(2.0 / (9 * 64)), rel=0.2)
    assert model.classifier[0].weight.std().item() == pytest.approx(0.01, rel=0.05)


# ------------------------------------------------------------------------------------------------ taps


TAP_CASES = [
    ("alexnet_small", 32, ["conv1", "conv2", "conv3", "conv4", "conv5"], [96, 256, 384, 384, 256]),
    ("vgg16_small", 32, ["conv1", "conv2", "conv3", "conv4", "conv5"], [64, 128, 256, 512, 512]),
    ("resnet18", 32, ["conv1", "layer1", "layer2", "layer3", "layer4"], [64, 64, 128, 256, 512]),
]


@pytest.mark.parametrize(("arch", "size", "names", "channels"), TAP_CASES)
def test_forward_taps_shapes_and_relu(
    models: ModelGetter, arch: str, size: int, names: list[str], channels: list[int]
) -> None:
    model = models(arch, size)
    assert model.tap_names == names
    x = _seeded_input(2, size)
    with torch.no_grad():
        taps = model.forward_taps(x, list(reversed(names)))
        single = model.forward_taps(x, [names[1]])
    assert list(taps) == list(reversed(names))
    for name, width in zip(names, channels, strict=True):
        assert taps[name].shape[:2] == (2, width)
        assert (taps[name] >= 0).all() and (taps[name] > 0).any()
    assert torch.equal(single[names[1]], taps[names[1]])


def test_forward_taps_are_real_intermediates_and_stop_early(models: ModelGetter) -> None:
    model = models("alexnet_small", 32)
    x = _seeded_input(2, 32)
    deeper_calls: list[str] = []
    handles = [
        model.features[i].register_forward_hook(lambda *_, i=i: deeper_calls.append(f"features.{i}"))
        for i in range(model.tap_index["conv2"] + 1, len(model.features))
    ]
    handles.append(model.classifier.register_forward_hook(lambda *_: deeper_calls.append("classifier")))
    try:
        with torch.no_grad():
            taps = model.forward_taps(x, ["conv2", "conv1"])
    finally:
        for handle in handles:
            handle.remove()
    assert deeper_calls == [] and set(taps) == {"conv1", "conv2"}
    with torch.no_grad():
        conv5 = model.forward_taps(x, ["conv5"])["conv5"]
        rebuilt = model.classifier(torch.flatten(model.features[-1](conv5), 1))
        assert torch.allclose(rebuilt, model(x), atol=1e-5)
    resnet = models("resnet18", 32)
    with torch.no_grad():
        layer4 = resnet.forward_taps(x, "layer4")["layer4"]
        assert torch.allclose(torch.flatten(resnet.avgpool(layer4), 1), resnet(x), atol=1e-5)


def test_unknown_tap_lists_valid_names(models: ModelGetter) -> None:
    model = models("alexnet_small", 32)
    with pytest.raises(ValueError, match=r"fc7.*conv1.*conv5"):
        model.forward_taps(_seeded_input(1, 32), ["conv1", "fc7"])


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_arch_error() -> None:
    with pytest.raises(ValueError, match=r"'alexnet_huge'.*alexnet_small.*resnet50"):
        build_backbone("alexnet_huge")


@pytest.mark.parametrize(
    ("arch", "size", "pattern"),
    [
        ("alexnet", 64, r"input_size=64.*'alexnet_small'"),
        ("vgg16", 32, r"input_size=32.*'vgg16_small'"),
        ("alexnet_small", 224, r"input_size=224.*'alexnet'"),
        ("vgg16_small", 128, r"input_size=128.*'vgg16'"),
        ("resnet18", 8, r"input_size=8"),
        ("alexnet_small", 0, r"input_size must be a positive integer"),
        ("resnet50", 32.0, r"input_size must be a positive integer"),
    ],
)
def test_bad_input_size_errors(arch: str, size: int, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build_backbone(arch, input_size=size)


def test_forward_rejects_wrong_resolution_and_channels(models: ModelGetter) -> None:
    model = models("alexnet_small", 32)
    with torch.no_grad():
        with pytest.raises(ValueError, match="input_size=32"):
            model(_seeded_input(1, 64))
        with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
            model(torch.zeros(1, 1, 32, 32))


def test_default_arch_for() -> None:
    assert default_arch_for(32) == "alexnet_small"
    assert default_arch_for(96) == "alexnet_small"
    assert default_arch_for(224) == "alexnet"
    assert default_arch_for(64, "vgg16") == "vgg16_small"
    assert default_arch_for(160, "vgg16") == "vgg16"
    assert default_arch_for(32, "resnet18") == "resnet18"
    assert default_arch_for(224, "resnet50") == "resnet50"
    with pytest.raises(ValueError, match="input_size=112"):
        default_arch_for(112)
    with pytest.raises(ValueError, match=r"'densenet'.*alexnet"):
        default_arch_for(32, "densenet")


# ----------------------------------------------------------------------------------------------- heads


def test_linear_head_init_and_reproducibility() -> None:
    head = linear_head(4096, 500, generator=torch.Generator().manual_seed(3))
    assert (head.in_features, head.out_features) == (4096, 500)
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(head.weight.mean().item()) < 1e-3
    assert torch.count_nonzero(head.bias) == 0
    rng_before = torch.get_rng_state()
    same = linear_head(4096, 500, generator=torch.Generator().manual_seed(3))
    other = linear_head(4096, 500, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(head.weight, same.weight)
    assert not torch.equal(head.weight, other.weight)
    with pytest.raises(ValueError, match="n_out"):
        linear_head(16, 0)


def test_classifier_head_applies_relu_then_linear() -> None:
    head = ClassifierHead(8, 3, generator=torch.Generator().manual_seed(0))
    assert isinstance(head.linear, nn.Linear) and (head.in_dim, head.n_out) == (8, 3)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        head.linear.bias.fill_(0.25)
        assert torch.allclose(head(x), head.linear(torch.relu(x)))
        assert torch.allclose(head(-x.abs()), torch.full((5, 3), 0.25))
    assert x.min() < 0  # the head did not modify its input in place


# ------------------------------------------------------------------------------ bf16 + channels_last


@pytest.mark.parametrize(("arch", "size"), [("alexnet_small", 32), ("resnet18", 16)])
def test_bf16_autocast_channels_last_training_step(arch: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_backbone(arch, input_size=size).to(memory_format=torch.channels_last)
    head = ClassifierHead(model.feature_dim, 4, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD([*model.trainable_parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    x = _seeded_input(2, size).to(memory_format=torch.channels_last)
    target = torch.tensor([0, 3])
    first_weight = next(iter(model.trainable_parameters())).detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(head(model(x)), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(next(iter(model.trainable_parameters())), first_weight)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        taps = model.eval().forward_taps(x, model.tap_names[-1:])
    assert torch.isfinite(taps[model.tap_names[-1]].float()).all()
