"""First-layer filters (DeepCluster paper, visualisations): the first learned convolution's kernels as pictures.

* :func:`filter_mosaic`: the kernels laid out as one grid of tiles (:class:`FilterMosaic`), with the filters
  after the Sobel layer composed into the grey kernel they amount to (:func:`composed_sobel_filters`).
* :func:`first_layer_filters`: that mosaic written as a PNG, with its caption.

The report's other filter pictures live next to this module: taps and channels in
:mod:`deepcluster.report.taps`, top-activating images in :mod:`deepcluster.report.activations`, gradient
ascent in :mod:`deepcluster.report.ascent`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from deepcluster.models.backbone import sobel_layer
from deepcluster.models.sobel import Sobel
from deepcluster.report.picture import Picture, save_figure

__all__ = [
    "BACKGROUND",
    "MIN_TILE_PX",
    "PAIR_GAP_PX",
    "TILE_GAP_PX",
    "FilterMosaic",
    "composed_sobel_filters",
    "filter_mosaic",
    "first_conv",
    "first_layer_filters",
]

MIN_TILE_PX = 24
"""Kernels are upscaled (nearest neighbour, integer factor) until a tile is at least this many pixels wide."""
TILE_GAP_PX = 2
"""Background pixels between (and around) the tiles of a filter mosaic."""
PAIR_GAP_PX = 1
"""Pixels between the x and y halves of a Sobel-channel tile."""
BACKGROUND = 1.0
"""Mosaic background (white)."""


@dataclass(frozen=True)
class FilterMosaic:
    """The first-layer filters laid out as one picture.

    ``pixels`` is float [H, W] (grey) or [H, W, 3] (RGB) in [0, 1]; ``rows`` x ``cols`` tiles of
    ``tile_height`` x ``tile_width`` px each, ``gap`` px apart and around, so
    ``H = rows * tile_height + (rows + 1) * gap`` and likewise for W. ``scale`` is the nearest-neighbour
    upscaling factor of the kernels, ``mode`` one of ``rgb``, ``sobel_composed``, ``sobel_channels``,
    ``grey``, ``channels`` (see :func:`filter_mosaic`).
    """

    pixels: np.ndarray
    n_filters: int
    rows: int
    cols: int
    tile_height: int
    tile_width: int
    gap: int
    scale: int
    mode: str
    kernel_size: tuple[int, int]


def first_conv(backbone: nn.Module) -> nn.Conv2d:
    """The first learned ``nn.Conv2d`` of ``backbone``: the fixed Sobel convolutions are skipped.

    Prefers the first convolution whose weight requires grad; if every parameter is frozen (a backbone
    loaded for evaluation), the first convolution outside the Sobel layer.
    """
    in_sobel = {
        id(sub) for module in backbone.modules() if isinstance(module, Sobel) for sub in module.modules()
    }
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d) and id(m) not in in_sobel]
    for conv in convs:
        if conv.weight.requires_grad:
            return conv
    if convs:
        return convs[0]
    raise ValueError("the backbone has no convolution outside its Sobel layer")


def composed_sobel_filters(weight: torch.Tensor, sobel: Sobel) -> torch.Tensor:
    """The filters ``weight`` [O, 2, k, k] applied after ``sobel``, as one grey kernel [O, k + 2, k + 2] each.

    The Sobel layer is linear, so conv1(sobel(image)) equals one convolution of the grey image (the mean of
    R, G, B) with ``sum_c full_conv(weight[:, c], sobel_kernel_c)`` (away from the borders, biases aside).
    """
    gradients = sobel[1].weight.detach().to(weight)  # [2, 1, 3, 3]
    # conv_transpose2d with a [2, 1, 3, 3] weight computes the full convolution of each channel with its Sobel
    # kernel, summed over the two channels: exactly the equivalent kernel on the grey image.
    composed = torch.nn.functional.conv_transpose2d(weight, gradients)
    grey = sobel[0].weight.detach().to(weight).sum()  # the 1x1 grey conversion's total weight (1.0)
    return composed[:, 0] * grey


def _signed_grey(kernel: np.ndarray) -> np.ndarray:
    """Signed values -> [0, 1] with 0 at mid-grey, scaled by this kernel's largest magnitude."""
    top = float(np.abs(kernel).max())
    return 0.5 + 0.5 * kernel / top if top > 0 else np.full_like(kernel, 0.5)


def _min_max(kernel: np.ndarray) -> np.ndarray:
    lo, hi = float(kernel.min()), float(kernel.max())
    return (kernel - lo) / (hi - lo) if hi > lo else np.full_like(kernel, 0.5)


def filter_mosaic(
    backbone: nn.Module, sobel_view: str = "composed", min_tile_px: int = MIN_TILE_PX
) -> FilterMosaic:
    """Lay out the first learned convolution's kernels as a grid of tiles, each normalised on its own.

    * 3 input channels: RGB tiles, each kernel min-max scaled to [0, 1] over its three channels.
    * 2 channels after the Sobel layer, ``sobel_view="composed"`` (default): the grey kernel the filter
      amounts to on the grey image (see :func:`composed_sobel_filters`, k + 2 px wide), mid-grey = 0,
      white / black = the kernel's largest positive / negative weight.
    * 2 channels, ``sobel_view="channels"`` (or no Sobel layer found): the weights on the horizontal (x)
      and vertical (y) Sobel gradient side by side, same signed grey scale shared by the pair.
    * 1 channel (or any other count, channel by channel): signed grey as above.
    """
    if sobel_view not in ("composed", "channels"):
        raise ValueError(f"sobel_view={sobel_view!r}: choose 'composed' or 'channels'")
    conv = first_conv(backbone)
    weight = conv.weight.detach().float().cpu()
    n, channels, kh, kw = weight.shape
    sobel = sobel_layer(backbone)
    if channels == 3:
        mode = "rgb"
        kernels = [_min_max(w.permute(1, 2, 0).numpy()) for w in weight]
    elif channels == 2 and sobel is not None and sobel_view == "composed":
        mode = "sobel_composed"
        kernels = [_signed_grey(k.numpy()) for k in composed_sobel_filters(weight, sobel)]
    else:
        mode = "sobel_channels" if channels == 2 else ("grey" if channels == 1 else "channels")
        kernels = [_signed_grey(w.numpy()) for w in weight]  # [channels, kh, kw] each, one shared scale
    base_h, base_w = kernels[0].shape[:2]
    scale = max(1, math.ceil(min_tile_px / max(base_h, base_w)))
    tiles = []
    for kernel in kernels:
        if mode == "rgb":
            tiles.append(np.kron(kernel, np.ones((scale, scale, 1))))
        elif mode == "sobel_composed":
            tiles.append(np.kron(kernel, np.ones((scale, scale))))
        else:
            parts = [np.kron(part, np.ones((scale, scale))) for part in kernel]
            gap = np.full((parts[0].shape[0], PAIR_GAP_PX), BACKGROUND)
            row: list[np.ndarray] = []
            for i, part in enumerate(parts):
                row += [gap, part] if i else [part]
            tiles.append(np.concatenate(row, axis=1))
    tile_h, tile_w = tiles[0].shape[:2]
    cols = math.ceil(math.sqrt(n * tile_h / tile_w))
    rows = math.ceil(n / cols)
    shape = (rows * tile_h + (rows + 1) * TILE_GAP_PX, cols * tile_w + (cols + 1) * TILE_GAP_PX)
    pixels = np.full(shape + ((3,) if mode == "rgb" else ()), BACKGROUND)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        top, left = TILE_GAP_PX + r * (tile_h + TILE_GAP_PX), TILE_GAP_PX + c * (tile_w + TILE_GAP_PX)
        pixels[top : top + tile_h, left : left + tile_w] = tile
    return FilterMosaic(pixels, n, rows, cols, tile_h, tile_w, TILE_GAP_PX, scale, mode, (kh, kw))


def _show_pixels(pixels: np.ndarray, out_path: Path, zoom: int = 1, dpi: int = 100) -> None:
    """Write ``pixels`` (float in [0, 1], grey or RGB) as a PNG, ``zoom`` screen pixels per pixel."""
    height, width = pixels.shape[:2]
    figure = Figure(figsize=(width * zoom / dpi, height * zoom / dpi), dpi=dpi)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.imshow(pixels, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_axis_off()
    save_figure(figure, out_path, dpi=dpi)


def first_layer_filters(
    backbone: nn.Module, out_path: Path, rel_path: str, sobel_view: str = "composed"
) -> Picture:
    """Write the first learned convolution's kernels as a PNG grid (see :func:`filter_mosaic`)."""
    mosaic = filter_mosaic(backbone, sobel_view=sobel_view)
    _show_pixels(mosaic.pixels, Path(out_path))
    kh, kw = mosaic.kernel_size
    what = f"{mosaic.n_filters} filters of {kh}x{kw} px"
    if mosaic.mode == "rgb":
        how = "shown in RGB, each scaled from its own minimum (black) to maximum (white)."
    elif mosaic.mode == "sobel_composed":
        how = (
            "applied after the fixed Sobel layer, so each is shown as the single grey-level kernel it "
            "amounts to "
            f"on the grey image ({kh + 2}x{kw + 2} px: the filter convolved with the Sobel kernels). "
            "Mid-grey is 0, white and black the kernel's largest positive and negative weights."
        )
    elif mosaic.mode == "sobel_channels":
        how = (
            "applied after the fixed Sobel layer: each tile shows its weights on the horizontal gradient "
            "(left) "
            "and the vertical gradient (right). Mid-grey is 0, white and black the filter's largest positive "
            "and negative weights."
        )
    else:
        how = "one grey tile per input channel; mid-grey is 0, white and black the largest +/- weights."
    caption = (
        f"First convolutional layer: {what}, {how} Kernels enlarged {mosaic.scale}x (nearest neighbour)."
    )
    return Picture("First-layer filters", rel_path, caption)
