"""What the filters see (DeepCluster paper, visualisations): first-layer weights, top images, gradient ascent.

* :func:`first_layer_filters`: the first learned convolution's kernels as a grid of small pictures.
* :func:`top_activating_images`: for a few channels of a tap, the images of a sample that excite them most.
* :func:`gradient_ascent` / :func:`gradient_ascent_grid`: an input image optimised to excite one channel
  (opt-in, it runs ``steps`` forward/backward passes).

Every function puts the network in eval mode for its work and leaves its training flag and the
``requires_grad`` of its parameters as it found them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from deepcluster.models.sobel import Sobel
from deepcluster.report.picture import Picture, save_figure

MIN_TILE_PX = 24
"""Kernels are upscaled (nearest neighbour, integer factor) until a tile is at least this many pixels wide."""
TILE_GAP_PX = 2
"""Background pixels between (and around) the tiles of a filter mosaic."""
PAIR_GAP_PX = 1
"""Pixels between the x and y halves of a Sobel-channel tile."""
BACKGROUND = 1.0
"""Mosaic background (white)."""

# Gradient-ascent defaults, tuned on alexnet_small (16 px, with and without Sobel) trained for a few epochs on
# the test patterns: 100 steps give clear stripes / checkers for the channels that prefer them, in a few
# seconds for six channels at once on a busy 2-core CPU (a GPU takes well under a second). Adam's step is in
# normalised input units (one unit ~ one standard deviation of the data).
ASCENT_STEPS = 100
ASCENT_LR = 0.1
ASCENT_WEIGHT_DECAY = 0.003
"""Fraction the image shrinks by after each step (L2 decay, as in Yosinski et al. 2015)."""
ASCENT_BLUR_EVERY = 4
ASCENT_NOISE_STD = 0.1
"""Standard deviation of the starting noise in normalised input units."""


def default_blur_sigma(input_size: int) -> float:
    """Blur radius used when none is given: 0.5 px up to 127 px inputs, 1 px from 128, 1.5 px from 192."""
    return min(1.5, 0.5 * max(1, input_size // 64))


def default_jitter(input_size: int) -> int:
    """Largest random shift (px) of the image before each step: an eighth of the side, 1 to 8 px."""
    return min(8, max(1, input_size // 8))


# ---------------------------------------------------------------------------------------------------- helpers


@contextmanager
def _frozen_eval(module: nn.Module) -> Iterator[None]:
    """Eval mode, parameters frozen inside the block; training flags and requires_grad restored after."""
    modes = {sub: sub.training for sub in module.modules()}
    grads = [(param, param.requires_grad) for param in module.parameters()]
    try:
        module.eval()
        for param, _ in grads:
            param.requires_grad_(False)
        yield
    finally:
        for sub, mode in modes.items():
            sub.train(mode)
        for param, flag in grads:
            param.requires_grad_(flag)


def _device(module: nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


def tap_names(backbone: nn.Module) -> list[str]:
    """The backbone's tap names, shallowest first (``tap_names`` is a property on our backbones)."""
    names = backbone.tap_names
    return list(names() if callable(names) else names)


def _check_tap(backbone: nn.Module, tap: str) -> None:
    valid = tap_names(backbone)
    if tap not in valid:
        raise ValueError(f"unknown tap {tap!r}; valid taps: {valid}")


def _input_size(backbone: nn.Module, input_size: int | None = None) -> int:
    size = input_size if input_size is not None else getattr(backbone, "input_size", None)
    if size is None:
        raise ValueError("input_size is needed: the backbone has no input_size attribute")
    return int(size)


def tap_channels(backbone: nn.Module, tap: str, input_size: int | None = None) -> int:
    """Number of channels of ``tap`` (one forward pass of a blank image); ValueError for an unknown tap."""
    _check_tap(backbone, tap)
    size = _input_size(backbone, input_size)
    with _frozen_eval(backbone), torch.no_grad():
        x = torch.zeros(1, 3, size, size, device=_device(backbone))
        return int(backbone.forward_taps(x, [tap])[tap].shape[1])


def _check_channels(
    backbone: nn.Module, tap: str, channels: Sequence[int], input_size: int | None = None
) -> int:
    count = tap_channels(backbone, tap, input_size)
    bad = [
        c
        for c in channels
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < count
    ]
    if bad:
        bad = [int(c) if isinstance(c, np.integer) else c for c in bad]
        raise ValueError(f"channel(s) {bad} do not exist at tap {tap!r}; valid channels: 0..{count - 1}")
    if not channels:
        raise ValueError(f"no channels given for tap {tap!r}; valid channels: 0..{count - 1}")
    return count


def default_taps(backbone: nn.Module) -> list[str]:
    """The middle and the last tap of ``backbone`` (``conv3`` and ``conv5`` for AlexNet), shallowest first."""
    names = tap_names(backbone)
    if not names:
        raise ValueError("the backbone has no taps")
    picked = [names[(len(names) - 1) // 2], names[-1]]
    return list(dict.fromkeys(picked))


def default_channels(backbone: nn.Module, tap: str, n: int, seed: int) -> list[int]:
    """``n`` distinct channels of ``tap`` (all of them if it has fewer), drawn with ``seed``, sorted."""
    count = tap_channels(backbone, tap)
    rng = np.random.default_rng(seed)
    picked = rng.choice(count, size=min(max(int(n), 0), count), replace=False)
    return sorted(int(c) for c in picked)


# ------------------------------------------------------------------------------------------------ first layer


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


def _sobel_of(backbone: nn.Module) -> Sobel | None:
    for module in backbone.modules():
        if isinstance(module, Sobel):
            return module
    return None


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
    sobel = _sobel_of(backbone)
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


# ------------------------------------------------------------------------------------------------- top images


def channel_means(
    backbone: nn.Module,
    images: torch.Tensor,
    view: Callable[[torch.Tensor], torch.Tensor],
    tap: str,
    channels: Sequence[int],
    batch_size: int = 128,
) -> np.ndarray:
    """Spatial mean activation of ``channels`` at ``tap`` for every image: float [n, len(channels)].

    ``images`` uint8 [n, 3, S, S] go through ``view`` batch by batch; eval mode, no grad.
    """
    _check_channels(backbone, tap, channels)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 [n, 3, S, S], got shape {tuple(images.shape)}")
    index = torch.as_tensor(list(channels), dtype=torch.long)
    device = _device(backbone)
    out = []
    with _frozen_eval(backbone), torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = view(images[start : start + batch_size]).to(device)
            act = backbone.forward_taps(x, [tap])[tap]
            out.append(act.mean(dim=(2, 3))[:, index.to(act.device)].float().cpu())
    if not out:
        return np.zeros((0, len(index)), dtype=np.float32)
    return torch.cat(out).numpy()


def top_activating_indices(means: np.ndarray, per_channel: int) -> np.ndarray:
    """For each column of ``means`` [n, c], the indices of its ``per_channel`` largest values, highest first.

    Ties go to the lower index. Returns int64 [c, min(per_channel, n)].
    """
    keep = min(per_channel, means.shape[0])
    order = np.argsort(-means, axis=0, kind="stable")[:keep]
    return np.ascontiguousarray(order.T).astype(np.int64)


def top_activating_images(
    backbone: nn.Module,
    images: torch.Tensor,
    view: Callable[[torch.Tensor], torch.Tensor],
    thumbs: np.ndarray,
    tap: str,
    channels: Sequence[int],
    out_path: Path,
    rel_path: str,
    per_channel: int = 8,
    batch_size: int = 128,
) -> Picture:
    """One row per channel of ``tap``: the ``per_channel`` images that excite it most, highest first.

    A channel's activation on an image is its spatial mean at ``tap`` (post-ReLU); ``thumbs`` uint8
    [n, h, w, 3] are what is shown for the ``images`` [n, 3, S, S] given to the network through ``view``.
    """
    if len(thumbs) != len(images):
        raise ValueError(f"{len(thumbs)} thumbnails for {len(images)} images: they must match")
    if len(images) == 0:
        raise ValueError("no images to rank")
    if per_channel < 1:
        raise ValueError(f"per_channel must be >= 1, got {per_channel}")
    means = channel_means(backbone, images, view, tap, channels, batch_size)
    order = top_activating_indices(means, per_channel)
    rows, cols = order.shape
    figure = Figure(figsize=(0.9 * cols + 0.8, 0.95 * rows + 0.2))
    grid = figure.subplots(rows, cols, squeeze=False)
    for r, channel in enumerate(channels):
        for c in range(cols):
            axes = grid[r, c]
            i = int(order[r, c])
            axes.imshow(thumbs[i], interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_title(f"{means[i, r]:.2f}", fontsize=6, pad=2)
            for spine in axes.spines.values():
                spine.set_visible(False)
        grid[r, 0].set_ylabel(f"ch {channel}", fontsize=8, rotation=0, ha="right", va="center")
    figure.subplots_adjust(wspace=0.05, hspace=0.35)
    save_figure(figure, Path(out_path))
    caption = (
        f"Channels of {tap}: each row shows the {cols} images (of a sample of {len(images)}) with the "
        "highest "
        f"mean activation of that channel, highest first; the number above an image is that activation."
    )
    return Picture(f"Top images, {tap}", rel_path, caption)


# -------------------------------------------------------------------------------------------- gradient ascent


@dataclass(frozen=True)
class AscentResult:
    """What :func:`maximise_activation` found.

    ``inputs`` float [c, 3, S, S] are the optimised network inputs (normalised space), ``images`` uint8
    [c, S, S, 3] their displayable pixels, ``start`` / ``final`` float [c] each channel's mean activation on
    the starting noise and on the result.
    """

    inputs: torch.Tensor
    images: np.ndarray
    start: np.ndarray
    final: np.ndarray


def _blur_kernel(sigma: float, size: int) -> int:
    kernel = 2 * math.ceil(3 * sigma) + 1
    largest = size if size % 2 else size - 1
    return max(3, min(kernel, largest))


def _display(inputs: torch.Tensor, grey: bool) -> np.ndarray:
    """Per-image robust normalisation: the 1st..99th percentile of each image mapped to 0..255."""
    x = inputs.detach().float().cpu()
    if grey:  # the Sobel layer sees only the mean of R, G and B
        x = x.mean(dim=1, keepdim=True).expand_as(x)
    out = []
    for image in x:
        lo, hi = torch.quantile(image.flatten(), torch.tensor([0.01, 0.99])).tolist()
        scaled = (image - lo) / (hi - lo) if hi > lo else torch.full_like(image, 0.5)
        out.append((scaled.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    return np.stack(out)


def _tap_activation(backbone: nn.Module, x: torch.Tensor, tap: str, pre_relu: bool) -> torch.Tensor:
    """The activation at ``tap``; with ``pre_relu``, the input of the tap's ReLU when the tap is one.

    A channel that is off (ReLU at 0) everywhere on the starting noise has no gradient after its ReLU; its
    pre-activation still does, so the ascent follows that and still raises the post-ReLU value.
    """
    stages = getattr(backbone, "tap_stages", None)
    if not pre_relu or stages is None:
        return backbone.forward_taps(x, [tap])[tap]
    h = backbone.preprocess(x)
    for name, module in stages():
        if name == tap and isinstance(module, nn.ReLU):
            return h  # what the ReLU would clamp; nothing after the tap is needed
        h = module(h)
        if name == tap:
            return h
    raise ValueError(f"unknown tap {tap!r}; valid taps: {tap_names(backbone)}")


def maximise_activation(
    backbone: nn.Module,
    tap: str,
    channels: Sequence[int],
    input_size: int,
    steps: int = ASCENT_STEPS,
    lr: float = ASCENT_LR,
    weight_decay: float = ASCENT_WEIGHT_DECAY,
    blur_every: int = ASCENT_BLUR_EVERY,
    blur_sigma: float | None = None,
    seed: int = 0,
    jitter: int | None = None,
) -> AscentResult:
    """Optimise one input image per channel to maximise that channel's spatial mean activation at ``tap``.

    Every image starts from the same Gaussian noise (std ``ASCENT_NOISE_STD`` in the network's normalised
    input space, drawn from a generator seeded with ``seed``), then takes ``steps`` Adam steps of size ``lr``
    on minus the channel's mean (pre-ReLU when the tap is a ReLU, so that a channel off on the noise still
    has a gradient), each on a copy rolled by a random shift of up to ``jitter`` px (same generator); after
    each step the image shrinks by ``(1 - weight_decay)`` (L2 decay) and every ``blur_every`` steps it is
    blurred with a Gaussian of ``blur_sigma`` px. ``blur_sigma`` / ``jitter`` None: :func:`default_blur_sigma`
    / :func:`default_jitter` of ``input_size``. The Sobel front end stays in the graph. Eval mode, parameters
    frozen and restored after. Images are independent, so a batch gives each the result it would get alone.
    ``start`` / ``final`` are post-ReLU means (what :func:`top_activating_images` ranks by).
    """
    _check_channels(backbone, tap, channels, input_size)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    device = _device(backbone)
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(1, 3, input_size, input_size, generator=generator) * ASCENT_NOISE_STD
    x = noise.repeat(len(channels), 1, 1, 1).to(device).requires_grad_(True)
    index = torch.as_tensor(list(channels), dtype=torch.long, device=device)
    rows = torch.arange(len(channels), device=device)
    blur_sigma = default_blur_sigma(input_size) if blur_sigma is None else float(blur_sigma)
    jitter = default_jitter(input_size) if jitter is None else int(jitter)
    kernel = _blur_kernel(blur_sigma, input_size)

    def activation(inputs: torch.Tensor, pre_relu: bool = False) -> torch.Tensor:
        act = _tap_activation(backbone, inputs, tap, pre_relu)
        return act.mean(dim=(2, 3))[rows, index]

    with _frozen_eval(backbone):
        with torch.no_grad():
            start = activation(x).cpu().numpy()
        optimiser = torch.optim.Adam([x], lr=lr)
        for step in range(1, steps + 1):
            optimiser.zero_grad(set_to_none=True)
            shifted = x
            if jitter > 0:
                dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=generator)).tolist()
                shifted = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            (-activation(shifted, pre_relu=True).sum()).backward()
            optimiser.step()
            with torch.no_grad():
                x.mul_(1.0 - weight_decay)
                if blur_every > 0 and blur_sigma > 0 and step % blur_every == 0:
                    x.copy_(gaussian_blur(x, [kernel, kernel], [blur_sigma, blur_sigma]))
        with torch.no_grad():
            final = activation(x).cpu().numpy()
    inputs = x.detach()
    grey = _sobel_of(backbone) is not None
    return AscentResult(inputs, _display(inputs, grey), start, final)


def gradient_ascent(
    backbone: nn.Module,
    tap: str,
    channel: int,
    input_size: int,
    steps: int = ASCENT_STEPS,
    lr: float = ASCENT_LR,
    weight_decay: float = ASCENT_WEIGHT_DECAY,
    blur_every: int = ASCENT_BLUR_EVERY,
    blur_sigma: float | None = None,
    seed: int = 0,
    jitter: int | None = None,
) -> np.ndarray:
    """The image (uint8 [S, S, 3]) maximising ``channel`` at ``tap`` (see :func:`maximise_activation`)."""
    result = maximise_activation(
        backbone, tap, [channel], input_size, steps, lr, weight_decay, blur_every, blur_sigma, seed, jitter
    )
    return result.images[0]


def gradient_ascent_grid(
    backbone: nn.Module,
    tap: str,
    channels: Sequence[int],
    input_size: int,
    out_path: Path,
    rel_path: str,
    steps: int = ASCENT_STEPS,
    seed: int = 0,
) -> Picture:
    """Write one gradient-ascent image per channel of ``tap`` as a PNG grid (:func:`maximise_activation`)."""
    result = maximise_activation(backbone, tap, channels, input_size, steps=steps, seed=seed)
    n = len(channels)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    figure = Figure(figsize=(1.2 * cols, 1.35 * rows))
    grid = figure.subplots(rows, cols, squeeze=False)
    for axes in grid.flat:
        axes.set_axis_off()
    for i, channel in enumerate(channels):
        axes = grid[divmod(i, cols)]
        axes.imshow(result.images[i], interpolation="nearest")
        axes.set_title(f"ch {channel}", fontsize=7, pad=2)
    figure.subplots_adjust(wspace=0.08, hspace=0.25)
    save_figure(figure, Path(out_path))
    grey = " Grey, because the network sees images through its Sobel layer." if _sobel_of(backbone) else ""
    caption = (
        f"Channels of {tap}: input images optimised by gradient ascent ({steps} steps from the same small "
        "noise, with L2 decay, random shifts and periodic blur) to maximise each channel's mean activation; "
        "contrast stretched per image."
        f"{grey}"
    )
    return Picture(f"Gradient ascent, {tap}", rel_path, caption)
