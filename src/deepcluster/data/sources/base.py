"""What every image source shares: :class:`ImageSource`, :class:`DataError`, RGB conversion and descriptions."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import IO

import numpy as np
from PIL import Image

_WHITE = (255, 255, 255)


class DataError(ValueError):
    """Bad data input: the message names the path/option and what to do."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Return a new RGB copy of ``image``.

    Grayscale, palette, CMYK and other modes are converted with PIL; images with transparency (RGBA, LA, PA,
    palette with a transparent colour) are composited on a white background; 16-bit and 32-bit integer
    grayscale is scaled to 8 bits (65535 -> 255), float grayscale is clipped to [0, 255].
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image)
        if mode == "F":
            gray = np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)
        else:
            gray = np.round(np.clip(values.astype(np.float64), 0, 65535) / 257.0).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(file: str | os.PathLike[str] | IO[bytes], formats: list[str] | None = None) -> Image.Image:
    """Decode the image file ``file`` (a path or a binary file object) fully, as RGB. A decompression bomb is
    refused before it is decoded: PIL itself refuses images above twice ``Image.MAX_IMAGE_PIXELS`` and only warns
    above it (the warning would let a small file decode into gigabytes); both raise DecompressionBombError."""
    with Image.open(file, formats=formats) as image:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and image.width * image.height > limit:
            raise Image.DecompressionBombError(
                f"Image size ({image.width * image.height} pixels) exceeds limit of {limit} pixels, could be "
                "decompression bomb DOS attack."
            )
        image.load()
        return to_rgb(image)


def _format_count(n: int) -> str:
    return f"{n:,} image{'s' if n != 1 else ''}"


def _describe(kind: str, n: int, classes: Sequence[str] | None) -> str:
    detail = f"{len(classes)} classes" if classes is not None else "no labels"
    return f"{kind} ({_format_count(n)}, {detail})"


class ImageSource(ABC):
    """A finite, indexable collection of images with optional true labels (used for evaluation only).

    Subclasses that have them set ``_labels`` (int64 [N]), ``_classes`` (class names) and ``_names`` (one
    name per image); the defaults (None) mean no labels, no class names, and images named by their index.
    """

    description: str = "image source"
    _labels: np.ndarray | None = None
    _classes: list[str] | None = None
    _names: list[str] | None = None

    @abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB; raises on a corrupt or unreadable item."""

    def name(self, index: int) -> str:
        """A human-readable name of image ``index`` (path, archive file name, or the index)."""
        checked = self._check_index(index)
        return self._names[checked] if self._names is not None else f"{checked}"

    @property
    def labels(self) -> np.ndarray | None:
        """int64 [N] true class ids, or None."""
        return self._labels

    @property
    def classes(self) -> list[str] | None:
        """Class names in label order, or None."""
        return None if self._classes is None else list(self._classes)

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"image index {index} out of range for {self.description} (valid: 0..{n - 1})")
        return int(index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"
