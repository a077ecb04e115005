"""Images as a trained run takes them: file paths, PIL images, uint8 arrays or uint8 tensors, or a whole data
source read in batches. Each becomes the uint8 square the run decoded its own images to (`square_image`), so a
training image given again gives the values the run computed for it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from deepcluster.config import ConfigError
from deepcluster.data.decode import square_image
from deepcluster.data.sources import ImageSource, open_rgb, to_rgb

ImageLike = str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor
"""A path, a PIL image, a uint8 array (H x W x 3, H x W) or a uint8 tensor (3 x H x W)."""


@dataclass
class Batch:
    """Decoded images of one batch and where they came from."""

    images: torch.Tensor
    """uint8 [B, 3, S, S]."""
    names: list[str]
    indices: list[int]
    """Positions in the input (or source indices) of the images kept."""
    skipped: list[tuple[str, str]]
    """(name, reason) of the images that could not be read."""


def to_pil(item: ImageLike) -> Image.Image:
    """One image as an RGB PIL image, converted as training decodes its images (`to_rgb`: transparency on white,
    16-bit grayscale scaled; a file above PIL's pixel limit refused as a decompression bomb); ValueError naming
    what is wrong."""
    if isinstance(item, (str, os.PathLike)):
        return open_rgb(Path(item))
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, torch.Tensor):
        if item.dtype != torch.uint8 or item.ndim != 3 or item.shape[0] not in (1, 3):
            raise ValueError(
                f"a tensor image must be uint8 [3, H, W] (or [1, H, W]), got {item.dtype} {tuple(item.shape)}"
            )
        return to_rgb(TF.to_pil_image(item))
    if isinstance(item, np.ndarray):
        if (
            item.dtype != np.uint8
            or item.ndim not in (2, 3)
            or (item.ndim == 3 and item.shape[2] not in (1, 3, 4))
        ):
            raise ValueError(
                f"an array image must be uint8 H x W x 3 (or H x W), got {item.dtype} {item.shape}"
            )
        return to_rgb(Image.fromarray(item.squeeze(-1) if item.ndim == 3 and item.shape[2] == 1 else item))
    raise ValueError(f"cannot read an image from a {type(item).__name__}")


def _name(item: ImageLike, position: int) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"<image {position}>"


def as_items(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image or a sequence of them (a 4-d uint8 array or tensor is a batch) as a list."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Iterable):
        return list(images)
    raise ValueError(f"cannot read images from a {type(images).__name__}")


def batches_of_items(
    items: Sequence[ImageLike], resize: int, input_size: int, batch_size: int, strict: bool = True
) -> Iterator[Batch]:
    """`items` decoded `batch_size` at a time; an unreadable one raises ConfigError (`strict`) or is skipped."""
    for start in range(0, len(items), batch_size):
        yield _decode(
            (
                (start + i, _name(item, start + i), lambda item=item: to_pil(item))
                for i, item in enumerate(items[start : start + batch_size])
            ),
            resize,
            input_size,
            strict,
        )


def batches_of_source(source: ImageSource, resize: int, input_size: int, batch_size: int) -> Iterator[Batch]:
    """Every image of `source` in order, `batch_size` at a time; unreadable ones are skipped and reported."""
    for start in range(0, len(source), batch_size):
        stop = min(start + batch_size, len(source))
        yield _decode(
            ((i, source.name(i), lambda i=i: source.load(i)) for i in range(start, stop)),
            resize,
            input_size,
            strict=False,
        )


def _decode(entries: Iterable[tuple[int, str, Any]], resize: int, input_size: int, strict: bool) -> Batch:
    tensors, names, indices, skipped = [], [], [], []
    for index, name, load in entries:
        try:
            tensor = TF.pil_to_tensor(square_image(to_rgb(load()), resize, input_size))
        except Exception as error:  # one bad image is reported, never fatal unless asked
            if strict:
                raise ConfigError(
                    f"{name}: cannot read this image ({type(error).__name__}: {error})"
                ) from None
            skipped.append((name, f"{type(error).__name__}: {error}"))
            continue
        tensors.append(tensor)
        names.append(name)
        indices.append(index)
    images = torch.stack(tensors) if tensors else torch.zeros((0, 3, resize, resize), dtype=torch.uint8)
    return Batch(images, names, indices, skipped)
