"""The two views of an image, applied to whole batches of decoded uint8 tensors.

* Cluster view: centre crop to the input size, scale to [0, 1], normalise. No randomness.
* Train view: random resized crop (torchvision's sampling rule for a whole batch at once; on the CPU each crop
  is resized on uint8 with antialiased bilinear interpolation, exactly torchvision's `transforms.v2`
  `resized_crop` and about 2.5x faster than the batched `torchvision.ops.roi_align` other devices use),
  horizontal flip, optional brightness/contrast/saturation jitter (with a probability), random grayscale and
  Gaussian blur, normalise.
* Multi-crop view (SwAV): a few large train-view crops and several small ones of each image, as a list.

Images arrive as uint8 [B, 3, S, S] (decoded once, see `decode.py`); every random draw comes from a
`torch.Generator` the caller owns, so a batch's augmentation is fixed by the generator's seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import roi_align

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel, in place."""
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean_t).div_(std_t)


LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B."""


def _normalize_255(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """`_normalize(x / 255, mean, std)` for `x` in [0, 255], in place: a scale and a shift per channel."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], dtype=x.dtype, device=x.device)
    return x.mul_(scale).add_(shift.view(1, -1, 1, 1))


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] luma of [B, 3, H, W]: one new tensor, the channels added into it in place (large
    temporaries cost more in page faults than in arithmetic on the CPU)."""
    r, g, b = x.unbind(dim=1)
    w = _GRAY_WEIGHTS
    return torch.mul(r, w[0]).add_(g, alpha=w[1]).add_(b, alpha=w[2]).unsqueeze(1)


def center_crop_offsets(size: int, crop: int) -> int:
    """Top/left offset of a centre crop, rounded like torchvision's `center_crop`."""
    return int(round((size - crop) / 2.0))


@dataclass(frozen=True)
class ClusterView:
    """Deterministic view used to compute clustering features: centre crop, [0, 1], normalise."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grayscale: bool = False
    """Hide colour: every pixel's luma (ITU-R 601 weights) in all three channels, before the normalisation."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] -> float32 [B, 3, input_size, input_size]."""
        size = images.shape[-1]
        if size < self.input_size:
            raise ValueError(f"images of {size} px are smaller than input_size={self.input_size}")
        if size != self.input_size:
            top = center_crop_offsets(images.shape[-2], self.input_size)
            left = center_crop_offsets(size, self.input_size)
            images = images[..., top : top + self.input_size, left : left + self.input_size]
        pixels = images.float()
        if self.grayscale:
            luma = torch.tensor(LUMA, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
            pixels = (pixels * luma).sum(dim=1, keepdim=True).repeat(1, 3, 1, 1)
        return _normalize_255(pixels, self.mean, self.std)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """Crop boxes (x1, y1, x2, y2), float [n, 4], drawn as torchvision's RandomResizedCrop draws them.

    Each image gets up to `attempts` draws of area fraction ~ U(scale) and log aspect ratio ~ U(log ratio); the
    first draw that fits is kept, with an integer size and a uniform integer position. Images whose draws all
    fail get torchvision's fallback: the largest centred crop with a clamped aspect ratio.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target_area = area * torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(torch.empty(n, attempts).uniform_(log_lo, log_hi, generator=generator))
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(dim=1), ok.float().argmax(dim=1), torch.full((n,), -1))
    rows = torch.arange(n)
    pick = first.clamp(min=0)
    crop_w, crop_h = w[rows, pick], h[rows, pick]

    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_w, fb_h = int(round(height * ratio[1])), height
    else:
        fb_w, fb_h = width, height
    failed = first < 0
    crop_w = torch.where(failed, torch.full_like(crop_w, fb_w), crop_w)
    crop_h = torch.where(failed, torch.full_like(crop_h, fb_h), crop_h)

    u = torch.rand(n, 2, generator=generator)
    top = torch.floor(u[:, 0] * (height - crop_h + 1))
    left = torch.floor(u[:, 1] * (width - crop_w + 1))
    top = torch.where(failed, torch.div(height - crop_h, 2, rounding_mode="floor"), top)
    left = torch.where(failed, torch.div(width - crop_w, 2, rounding_mode="floor"), left)
    return torch.stack([left, top, left + crop_w, top + crop_h], dim=1)


def resized_crops(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    flip: torch.Tensor | None = None,
    batched: bool | None = None,
) -> torch.Tensor:
    """The integer boxes (x1, y1, x2, y2) [n, 4] of uint8 `images` [n, 3, H, W], each resized to `size` x `size`:
    float32 [n, 3, size, size] in [0, 255]. Per crop (the default on the CPU) each crop is interpolated on uint8
    (bilinear, antialiased, rounded to uint8: torchvision's `transforms.v2.functional.resized_crop` of a uint8
    tensor, pixel for pixel); `batched` (the default elsewhere: one kernel for the batch) uses `roi_align`
    (bilinear with adaptive sampling, within a few grey levels of it). The crops whose `flip` [n] (bool, CPU)
    is set are mirrored."""
    n = images.shape[0]
    if batched if batched is not None else images.device.type != "cpu":
        rois = torch.cat([torch.arange(n, dtype=boxes.dtype).unsqueeze(1), boxes], dim=1).to(images.device)
        x = roi_align(images.float(), rois, output_size=size, aligned=True)
        if flip is None:
            return x
        return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    out = torch.empty((n, 3, size, size), dtype=torch.uint8)
    mirrored = flip.tolist() if flip is not None else [False] * n
    for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        crop = images[i : i + 1, :, y1:y2, x1:x2].contiguous(memory_format=torch.channels_last)
        resized = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0]
        out[i] = resized.flip(-1) if mirrored[i] else resized
    return out.float()


@dataclass(frozen=True)
class TrainView:
    """Random resized crop + flip (+ colour jitter, grayscale), normalised; one call augments a whole batch."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    color_jitter: float = 0.0
    grayscale_prob: float = 0.0
    jitter_prob: float = 1.0
    """Share of the images whose colours are jittered (1: all of them, drawing nothing for the choice)."""
    blur_prob: float = 0.0
    """Share of the images blurred with a Gaussian of sigma ~ U(blur_sigma), kernel about a tenth of the side."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 [B, 3, S, S] -> float32 [B, 3, input_size, input_size]; randomness from `generator` (CPU)."""
        n, _, height, width = images.shape
        boxes = sample_crop_boxes(n, height, width, self.scale, self.ratio, generator)
        flip = torch.rand(n, generator=generator) < 0.5 if self.flip else None
        x = resized_crops(images, boxes, self.input_size, flip=flip)
        if not (self.color_jitter > 0 or self.grayscale_prob > 0 or self.blur_prob > 0):
            return _normalize_255(x, self.mean, self.std)  # crop and flip only: one pass from [0, 255]
        x.div_(255.0)
        if self.color_jitter > 0:
            factors = self._jitter_factors(n, generator)
            if self.jitter_prob < 1:
                chosen = (torch.rand(n, generator=generator) < self.jitter_prob).to(images.device)
                x[chosen] = self._jitter(x[chosen], factors[chosen.cpu()])
            else:
                self._jitter(x, factors)
        if self.grayscale_prob > 0:
            gray = (torch.rand(n, generator=generator) < self.grayscale_prob).to(images.device)
            x[gray] = _grayscale(x[gray]).expand(-1, 3, -1, -1)
        if self.blur_prob > 0:
            x = self._blur(x, generator)
        return _normalize(x, self.mean, self.std)

    def _blur(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Gaussian blur of the chosen images, each with its own sigma (one grouped convolution per axis)."""
        n, channels, height, width = x.shape
        chosen = torch.rand(n, generator=generator) < self.blur_prob
        sigma = torch.empty(n).uniform_(*self.blur_sigma, generator=generator)
        radius = max(1, int(0.05 * max(height, width)))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernels = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
        kernels = kernels / kernels.sum(dim=1, keepdim=True)
        identity = (offsets == 0).float().expand_as(kernels)
        kernels = torch.where(chosen[:, None], kernels, identity).to(x.device, x.dtype)
        weight = kernels.repeat_interleave(channels, dim=0)  # one kernel per (image, channel)
        flat = x.reshape(1, n * channels, height, width)
        padded = torch.nn.functional.pad(flat, (radius, radius, radius, radius), mode="reflect")
        rows = torch.nn.functional.conv2d(padded, weight.view(-1, 1, 1, 2 * radius + 1), groups=n * channels)
        both = torch.nn.functional.conv2d(rows, weight.view(-1, 1, 2 * radius + 1, 1), groups=n * channels)
        return both.reshape(n, channels, height, width)

    def _jitter_factors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Brightness, contrast and saturation factors ~ U(1 - s, 1 + s) per image: [n, 3]."""
        s = self.color_jitter
        return torch.empty(n, 3).uniform_(max(0.0, 1 - s), 1 + s, generator=generator)

    @staticmethod
    def _jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation of `x` [B, 3, H, W] in [0, 1] by `factors` [B, 3], in that
        order, in place (returns `x`)."""
        brightness, contrast, saturation = (f.view(-1, 1, 1, 1) for f in factors.to(x.device).unbind(dim=1))
        x.mul_(brightness).clamp_(0, 1)
        mean_gray = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x.mul_(contrast).add_((1 - contrast) * mean_gray).clamp_(0, 1)
        x.mul_(saturation).add_(_grayscale(x).mul_(1 - saturation)).clamp_(0, 1)
        return x


@dataclass(frozen=True)
class MultiCropView:
    """SwAV's multi-crop: `n_large` crops by the `large` view, then `n_small` by the `small` one (smaller side,
    smaller area), each drawn independently; returns the list of crop batches in that order."""

    large: TrainView
    small: TrainView | None = None
    n_large: int = 2
    n_small: int = 0

    def __post_init__(self) -> None:
        if self.n_large < 1 or self.n_small < 0 or (self.n_small and self.small is None):
            raise ValueError(
                f"MultiCropView: need n_large >= 1 and a small view for n_small > 0, got {self.n_large}, "
                f"{self.n_small}"
            )

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """uint8 [B, 3, S, S] -> [large crop 1, ..., small crop 1, ...], each float32 [B, 3, side, side]."""
        crops = [self.large(images, generator) for _ in range(self.n_large)]
        if self.small is not None:
            crops += [self.small(images, generator) for _ in range(self.n_small)]
        return crops
