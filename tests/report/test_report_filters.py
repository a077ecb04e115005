"""What the filters see: first-layer mosaics, top images and gradient ascent on small real networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as functional
from PIL import Image

from deepcluster.config import IMAGENET_MEAN, IMAGENET_STD
from deepcluster.data.views import ClusterView
from deepcluster.models import build_backbone
from deepcluster.models.backbone import Backbone
from deepcluster.report.activations import channel_means, top_activating_images, top_activating_indices
from deepcluster.report.ascent import gradient_ascent, gradient_ascent_grid, maximise_activation
from deepcluster.report.filters import composed_sobel_filters, filter_mosaic, first_conv, first_layer_filters
from deepcluster.report.taps import default_channels, default_taps
from synthetic import pattern_images

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAD_PX = 10  # save_figure's bbox_inches="tight" pads 0.1 in at 100 dpi


def small_net(sobel: bool, seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return build_backbone("alexnet_small", sobel=sobel, input_size=16)


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.fixture
def patterns() -> tuple[torch.Tensor, np.ndarray]:
    images, _ = pattern_images(40, seed=5)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), images


@pytest.mark.parametrize(
    ("sobel", "view", "mode", "tile"),
    [(True, "composed", "sobel_composed", (28, 28)), (True, "channels", "sobel_channels", (25, 51)),
     (False, "composed", "rgb", (25, 25))],
)  # fmt: skip
def test_first_layer_png_shows_one_tile_per_filter(
    tmp_path: Path, sobel: bool, view: str, mode: str, tile: tuple[int, int]
) -> None:
    net = small_net(sobel)
    conv = first_conv(net)
    assert conv is net.features[0] and conv.in_channels == (2 if sobel else 3)  # the Sobel convs are skipped
    picture = first_layer_filters(
        net, tmp_path / "filters" / "first.png", "filters/first.png", sobel_view=view
    )
    assert picture.path == "filters/first.png" and "96 filters of 5x5" in picture.caption
    mosaic = filter_mosaic(net, sobel_view=view)
    assert (mosaic.mode, mosaic.n_filters, (mosaic.tile_height, mosaic.tile_width)) == (mode, 96, tile)
    assert (mosaic.rows - 1) * mosaic.cols < 96 <= mosaic.rows * mosaic.cols
    height = mosaic.rows * mosaic.tile_height + (mosaic.rows + 1) * mosaic.gap
    width = mosaic.cols * mosaic.tile_width + (mosaic.cols + 1) * mosaic.gap
    assert mosaic.pixels.shape[:2] == (height, width)

    png = read_png(tmp_path / "filters" / "first.png")
    assert png.shape[:2] == (height + 2 * PAD_PX, width + 2 * PAD_PX)
    shown = png[PAD_PX : PAD_PX + height, PAD_PX : PAD_PX + width]
    expected = np.round(mosaic.pixels * 255).astype(int)
    expected = expected if expected.ndim == 3 else np.repeat(expected[..., None], 3, axis=2)
    assert np.abs(shown - expected).max() <= 2  # drawn pixel for pixel (grey colormap rounding aside)
    # Count the tiles in the PNG itself: the first 96 grid cells hold a picture, the rest is background.
    filled = []
    for r in range(mosaic.rows):
        for c in range(mosaic.cols):
            top = mosaic.gap + r * (mosaic.tile_height + mosaic.gap)
            left = mosaic.gap + c * (mosaic.tile_width + mosaic.gap)
            cell = shown[top : top + mosaic.tile_height, left : left + mosaic.tile_width]
            filled.append(bool((cell < 250).any()))
    assert sum(filled) == 96 and all(filled[:96])


def test_rgb_tiles_are_each_filter_scaled_to_its_own_range_and_enlarged() -> None:
    net = small_net(sobel=False)
    mosaic = filter_mosaic(net)
    weight = net.features[0].weight.detach()[7].permute(1, 2, 0).numpy()  # filter 7, [5, 5, 3]
    scaled = (weight - weight.min()) / (weight.max() - weight.min())
    r, c = divmod(7, mosaic.cols)
    top, left = (
        mosaic.gap + r * (mosaic.tile_height + mosaic.gap),
        mosaic.gap + c * (mosaic.tile_width + mosaic.gap),
    )
    tile = mosaic.pixels[top : top + mosaic.tile_height, left : left + mosaic.tile_width]
    assert mosaic.scale == 5
    np.testing.assert_allclose(tile[::5, ::5], scaled, atol=1e-6)
    np.testing.assert_allclose(tile[4::5, 4::5], scaled, atol=1e-6)  # nearest neighbour: constant 5x5 blocks


def test_composed_sobel_kernel_is_what_conv1_applies_to_the_grey_image() -> None:
    net = small_net(sobel=True)
    conv = first_conv(net)
    composed = composed_sobel_filters(conv.weight.detach(), net.sobel)  # [96, 7, 7]
    assert composed.shape == (96, 7, 7)
    image = torch.rand(2, 3, 16, 16)
    grey = functional.conv2d(image, net.sobel[0].weight)
    through_layers = functional.conv2d(functional.conv2d(grey, net.sobel[1].weight), conv.weight.detach())
    at_once = functional.conv2d(grey, composed.unsqueeze(1))
    torch.testing.assert_close(at_once, through_layers, atol=1e-5, rtol=1e-4)


def test_first_conv_is_found_on_a_frozen_network_and_a_resnet() -> None:
    net = small_net(sobel=True)
    for param in net.parameters():
        param.requires_grad_(False)
    assert first_conv(net) is net.features[0]
    resnet = build_backbone("resnet18", sobel=True, input_size=16)
    assert first_conv(resnet) is resnet.conv1
    mosaic = filter_mosaic(resnet)
    assert (mosaic.n_filters, mosaic.kernel_size, mosaic.tile_height) == (64, (3, 3), 25)  # 5x5 composed, x5


def test_top_activating_images_follow_the_channel_means_computed_by_hand(
    tmp_path: Path, patterns: tuple[torch.Tensor, np.ndarray]
) -> None:
    images, thumbs = patterns
    net = small_net(sobel=True)
    view = ClusterView(16, IMAGENET_MEAN, IMAGENET_STD)
    channels = [3, 41, 200]
    net.eval()
    with torch.no_grad():
        by_hand = net.forward_taps(view(images), ["conv3"])["conv3"].mean(dim=(2, 3))[:, channels].numpy()
    net.train()
    means = channel_means(net, images, view, "conv3", channels, batch_size=16)  # three batches
    np.testing.assert_allclose(means, by_hand, rtol=1e-4, atol=1e-6)
    order = top_activating_indices(means, 8)
    for column, channel in enumerate(channels):
        expected = sorted(range(len(images)), key=lambda i: -by_hand[i, column])[:8]
        assert order[column].tolist() == expected, channel
        assert np.all(np.diff(by_hand[order[column], column]) <= 0)  # highest first
    assert top_activating_indices(means, 100).shape == (3, 40)  # no more columns than images

    picture = top_activating_images(
        net,
        images,
        view,
        thumbs,
        "conv3",
        channels,
        tmp_path / "top.png",
        "top.png",
        per_channel=8,
        batch_size=16,
    )
    assert picture.path == "top.png" and "conv3" in picture.title
    png = read_png(tmp_path / "top.png")
    assert png.shape[0] > 3 * 16 and png.shape[1] > 8 * 16


def test_training_flag_and_requires_grad_are_restored(
    tmp_path: Path, patterns: tuple[torch.Tensor, np.ndarray]
) -> None:
    images, thumbs = patterns
    net = small_net(sobel=True)
    net.train()
    net.features[1].eval()  # a mixed state must come back as it was
    net.features[0].weight.requires_grad_(False)
    modes = [module.training for module in net.modules()]
    grads = [param.requires_grad for param in net.parameters()]
    view = ClusterView(16, IMAGENET_MEAN, IMAGENET_STD)
    before = {name: value.clone() for name, value in net.state_dict().items()}

    top_activating_images(
        net, images, view, thumbs, "conv2", [0, 5], tmp_path / "a.png", "a.png", per_channel=3
    )
    gradient_ascent(net, "conv2", 5, 16, steps=3)
    first_layer_filters(net, tmp_path / "b.png", "b.png")

    assert [module.training for module in net.modules()] == modes
    assert [param.requires_grad for param in net.parameters()] == grads
    for name, value in net.state_dict().items():  # eval mode: BN running statistics untouched
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert all(param.grad is None for param in net.parameters())


@pytest.mark.parametrize("sobel", [True, False])
def test_gradient_ascent_raises_the_channel_activation_and_is_deterministic(
    one_thread: None, sobel: bool, patterns: tuple[torch.Tensor, np.ndarray]
) -> None:
    net = small_net(sobel)
    channels = [7, 100]  # channel 7 is off (0 after its ReLU) on the starting noise
    on_data = channel_means(net, patterns[0], ClusterView(16, IMAGENET_MEAN, IMAGENET_STD), "conv3", channels)
    result = maximise_activation(net, "conv3", channels, 16, steps=40, seed=1)
    assert result.inputs.shape == (2, 3, 16, 16) and result.images.shape == (2, 16, 16, 3)
    net.eval()
    with torch.no_grad():
        reached = (
            net.forward_taps(result.inputs, ["conv3"])["conv3"].mean(dim=(2, 3))[[0, 1], channels].numpy()
        )
        noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.1
        start = net.forward_taps(noise, ["conv3"])["conv3"].mean(dim=(2, 3))[0, channels].numpy()
    np.testing.assert_allclose(result.final, reached, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.start, start, rtol=1e-4, atol=1e-5)
    # A clear margin: far above the noise it started from, and twice what the channel averages on real images.
    assert np.all(reached > 5 * start) and np.all(reached > 2 * on_data.mean(axis=0))

    image = gradient_ascent(net, "conv3", 100, 16, steps=40, seed=1)
    assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
    assert image.min() == 0 and image.max() == 255  # stretched to the full range
    np.testing.assert_array_equal(image, gradient_ascent(net, "conv3", 100, 16, steps=40, seed=1))
    assert np.abs(image.astype(int) - result.images[1].astype(int)).max() <= 1  # alone = in a batch
    assert not np.array_equal(image, gradient_ascent(net, "conv3", 100, 16, steps=40, seed=2))
    if sobel:  # the network only sees the grey level, so that is what is shown
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])


def test_gradient_ascent_grid_writes_a_png(tmp_path: Path, one_thread: None) -> None:
    net = small_net(sobel=True)
    picture = gradient_ascent_grid(net, "conv5", [1, 2, 3], 16, tmp_path / "ga.png", "ga.png", steps=4)
    assert picture.path == "ga.png" and "conv5" in picture.title and "4 steps" in picture.caption
    assert read_png(tmp_path / "ga.png").shape[1] > 3 * 16


def test_default_taps_and_channels() -> None:
    net = small_net(sobel=True)
    assert default_taps(net) == ["conv3", "conv5"]
    assert default_taps(build_backbone("resnet18", sobel=False, input_size=16)) == ["layer2", "layer4"]
    picked = default_channels(net, "conv2", 6, seed=4)
    assert picked == sorted(set(picked)) and len(picked) == 6 and all(0 <= c < 256 for c in picked)
    assert default_channels(net, "conv2", 6, seed=4) == picked
    assert default_channels(net, "conv2", 6, seed=5) != picked
    assert default_channels(net, "conv1", 500, seed=0) == list(range(96))


def test_unknown_taps_and_channels_are_refused_naming_the_valid_ones(
    tmp_path: Path, patterns: tuple[torch.Tensor, np.ndarray]
) -> None:
    images, thumbs = patterns
    net = small_net(sobel=True)
    view = ClusterView(16, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match=r"unknown tap 'conv9'.*'conv1', 'conv2', 'conv3', 'conv4', 'conv5'"):
        top_activating_images(net, images, view, thumbs, "conv9", [0], tmp_path / "t.png", "t.png")
    with pytest.raises(ValueError, match="unknown tap 'fc6'.*valid taps"):
        gradient_ascent(net, "fc6", 0, 16, steps=1)
    with pytest.raises(ValueError, match="unknown tap"):
        default_channels(net, "layer1", 3, seed=0)
    with pytest.raises(ValueError, match=r"channel\(s\) \[384\].*valid channels: 0\.\.383"):
        gradient_ascent(net, "conv3", 384, 16, steps=1)
    with pytest.raises(ValueError, match=r"channel\(s\) \[-1, 96\].*valid channels: 0\.\.95"):
        top_activating_images(net, images, view, thumbs, "conv1", [3, -1, 96], tmp_path / "t.png", "t.png")
    with pytest.raises(ValueError, match="thumbnails"):
        top_activating_images(net, images, view, thumbs[:5], "conv1", [3], tmp_path / "t.png", "t.png")
    assert not (tmp_path / "t.png").exists()
