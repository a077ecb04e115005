"""Gradient ascent (DeepCluster paper, visualisations): an input image optimised to excite one channel.

* :func:`maximise_activation`: one image per channel of a tap, all optimised at once (:class:`AscentResult`).
* :func:`gradient_ascent` / :func:`gradient_ascent_grid`: one channel's image, or a PNG grid of several
  (opt-in in the report, it runs ``steps`` forward/backward passes).

Every function puts the network in eval mode for its work and leaves its training flag and the
``requires_grad`` of its parameters as it found them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from deepcluster.models.backbone import frozen_eval, module_device, sobel_layer
from deepcluster.report.picture import Picture, save_figure
from deepcluster.report.taps import check_channels, check_tap

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
    check_tap(backbone, tap)
    raise RuntimeError(f"tap {tap!r} is named by tap_names but missing from tap_stages")


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
    check_channels(backbone, tap, channels, input_size)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    device = module_device(backbone)
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

    with frozen_eval(backbone):
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
    grey = sobel_layer(backbone) is not None
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
    grey = " Grey, because the network sees images through its Sobel layer." if sobel_layer(backbone) else ""
    caption = (
        f"Channels of {tap}: input images optimised by gradient ascent ({steps} steps from the same small "
        "noise, with L2 decay, random shifts and periodic blur) to maximise each channel's mean activation; "
        "contrast stretched per image."
        f"{grey}"
    )
    return Picture(f"Gradient ascent, {tap}", rel_path, caption)
