"""Decode every image of a source once into a square uint8 tensor cache (resize shorter side, centre crop)."""

from __future__ import annotations

import logging
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from deepcluster.data.sources import DataError, ImageSource

MAX_LISTED_FAILURES = 20
"""Per-image warnings logged before the rest of the failures are only counted."""

_COMPACT_CHUNK_BYTES = 64 * 1024 * 1024


@dataclass
class DecodedImages:
    """A decoded-image cache: the kept images, their source indices and the images that failed to decode."""

    images: Any  # uint8 [M, 3, S, S]: a contiguous tensor, or `stream.StreamedImages` (decoded on demand)
    indices: np.ndarray  # int64 [M] source index of each kept image (ascending)
    skipped: list[tuple[str, str]]  # (name, reason) of each image that could not be decoded
    size: int

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _crop_offset(margin: int, inner_margin: int) -> int:
    """Offset of the first crop so that, followed by a centre crop of ``inner_margin`` fewer pixels, the total
    offset is torchvision's single centre crop offset, ``round((margin + inner_margin) / 2)``."""
    return int(round((margin + inner_margin) / 2.0)) - int(round(inner_margin / 2.0))


def square_image(image: Image.Image, size: int, inner_size: int | None = None) -> Image.Image:
    """Resize the shorter side of an RGB image to ``size`` (bilinear, antialiased) and crop a ``size`` x ``size``
    square: torchvision's ``Resize(size)`` + ``CenterCrop(size)``.

    With ``inner_size``, the square is placed so that a later centre crop to ``inner_size`` (the cluster view)
    gives exactly torchvision's ``Resize(size)`` + ``CenterCrop(inner_size)``: two rounded half-offsets can
    otherwise differ from one by a pixel. The square then sits at most one pixel off centre.
    """
    if image.size != (size, size):
        image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        width, height = image.size
        inner_margin = size - inner_size if inner_size is not None and inner_size <= size else 0
        top, left = _crop_offset(height - size, inner_margin), _crop_offset(width - size, inner_margin)
        image = TF.crop(image, top, left, size, size)
    return image


def decode_into(
    source: ImageSource, index: int, size: int, out: torch.Tensor, inner_size: int | None = None
) -> str | None:
    """Decode image ``index`` into ``out`` (uint8 [3, size, size]); return the failure reason, or None."""
    try:
        image = square_image(source.load(index), size, inner_size)
        tensor = TF.pil_to_tensor(image)
        if tensor.shape != (3, size, size):
            return f"decoded to shape {tuple(tensor.shape)} instead of (3, {size}, {size})"
        out.copy_(tensor)
    except Exception as error:  # any failure of one image is reported and skipped, never fatal
        return f"{type(error).__name__}: {error}"
    return None


def _decode_chunk(
    source: ImageSource, start: int, stop: int, size: int, out: torch.Tensor | None, inner_size: int | None
) -> list[tuple[int, str]]:
    """Decode images [start, stop) into their rows of ``out``, or (``out`` None) into one scratch row."""
    scratch = torch.empty((3, size, size), dtype=torch.uint8) if out is None else None
    failures = []
    for index in range(start, stop):
        row = scratch if out is None else out[index]
        reason = decode_into(source, index, size, row, inner_size)
        if reason is not None:
            failures.append((index, reason))
    return failures


def _compact(out: torch.Tensor, failed: list[int]) -> torch.Tensor:
    """Move the kept rows of ``out`` to its front, in order and in place, and return the first M rows."""
    n = out.shape[0]
    row_bytes = max(1, out[0].numel())
    chunk_rows = max(1, _COMPACT_CHUNK_BYTES // row_bytes)
    bounds = [*failed, n]
    write = failed[0]
    for number, skipped_index in enumerate(failed):
        start, stop = skipped_index + 1, bounds[number + 1]
        for chunk_start in range(start, stop, chunk_rows):
            chunk_stop = min(stop, chunk_start + chunk_rows)
            rows = chunk_stop - chunk_start
            # clone: source and destination may overlap in memory
            out[write : write + rows] = out[chunk_start:chunk_stop].clone()
            write += rows
    return out[:write]


def _allocate(shape: tuple[int, int, int, int], cache_file: str | os.PathLike[str] | None) -> torch.Tensor:
    """An uninitialised uint8 tensor of ``shape``: in RAM, or backed by a memory-mapped ``.npy`` file."""
    if cache_file is None:
        return torch.empty(shape, dtype=torch.uint8)
    path = Path(cache_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    except OSError as error:
        raise DataError(
            f"cannot create the decoded-image cache {path} ({np.prod(shape) / 1e9:.1f} GB): {error}; "
            "free disk space or set data.cache_dir to another disk"
        ) from error
    return torch.from_numpy(array)


def decode_images(
    source: ImageSource,
    size: int,
    num_threads: int | None = None,
    progress: bool = True,
    log: logging.Logger | None = None,
    inner_size: int | None = None,
    cache_file: str | os.PathLike[str] | None = None,
    keep: bool = True,
) -> DecodedImages:
    """Decode every image of ``source`` once into a uint8 [M, 3, size, size] tensor.

    Each image is loaded as RGB, its shorter side resized to ``size`` (bilinear, antialiased) and centre
    cropped (placed for a later centre crop to ``inner_size``, the network's input, when given; see
    :func:`square_image`). With ``cache_file`` the tensor lives in that file, memory-mapped (for data sets
    larger than memory; the operating system pages it in and out), else in RAM. Images that fail to load are
    skipped, logged (at most ``MAX_LISTED_FAILURES`` lines plus a summary) and listed in ``skipped``;
    ``indices`` maps kept rows back to source indices. Raises DataError when no image at all can be decoded.
    With ``keep=False`` every image is decoded and dropped: only ``indices`` and ``skipped`` are found, and
    ``images`` is an empty [0, 3, size, size] tensor (the first pass of a streamed run, `data.stream`).
    """
    log = log if log is not None else logging.getLogger(__name__)
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise DataError(f"image size {size!r}: must be a positive integer number of pixels")
    size = int(size)
    if num_threads is not None and num_threads < 1:
        raise DataError(f"num_threads {num_threads}: must be at least 1 (or None for all CPU cores)")
    n = len(source)
    if n == 0:
        raise DataError(f"{source.description}: holds no images")
    threads = num_threads if num_threads is not None else (os.cpu_count() or 1)
    out = _allocate((n, 3, size, size), cache_file) if keep else None
    failures: list[tuple[int, str]] = []
    chunk = max(1, min(64, n // (threads * 8)))
    with tqdm(total=n, desc="decode", unit="img", disable=None if progress else True) as bar:
        if threads == 1:
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                failures.extend(_decode_chunk(source, start, stop, size, out, inner_size))
                bar.update(stop - start)
        else:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
                futures = [
                    (
                        start,
                        pool.submit(
                            _decode_chunk, source, start, min(n, start + chunk), size, out, inner_size
                        ),
                    )
                    for start in range(0, n, chunk)
                ]
                for start, future in futures:
                    failures.extend(future.result())
                    bar.update(min(n, start + chunk) - start)
    skipped = [(source.name(index), reason) for index, reason in failures]
    _report(skipped, n, source, log)
    if len(failures) == n:
        first_name, first_reason = skipped[0]
        raise DataError(
            f"{source.description}: none of the {n:,} images could be decoded "
            f"(first failure: {first_name}: {first_reason}); check the data path and file formats"
        )
    failed = [index for index, _ in failures]
    readable = np.ones(n, dtype=bool)
    readable[failed] = False
    if out is None:
        images = torch.empty((0, 3, size, size), dtype=torch.uint8)
    else:
        images = _compact(out, failed) if failed else out
    return DecodedImages(
        images=images, indices=np.flatnonzero(readable).astype(np.int64), skipped=skipped, size=size
    )


def _report(skipped: list[tuple[str, str]], total: int, source: ImageSource, log: logging.Logger) -> None:
    for name, reason in skipped[:MAX_LISTED_FAILURES]:
        log.warning("skipping image %s: %s", name, reason)
    if skipped:
        more = len(skipped) - MAX_LISTED_FAILURES
        listed = f" ({more:,} more not listed)" if more > 0 else ""
        log.warning(
            "skipped %s of %s images of %s that could not be decoded%s",
            f"{len(skipped):,}",
            f"{total:,}",
            source.description,
            listed,
        )
