"""Sources held in NumPy arrays and .npz archives: :class:`ArraySource` (pixel arrays),
:class:`JpegBytesSource` (concatenated image files) and the packaged CIFAR-10 test split
(:func:`embedded_source`)."""

from __future__ import annotations

import importlib.resources
import io
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepcluster.data.sources.base import DataError, ImageSource, _describe, open_rgb, to_rgb
from deepcluster.data.sources.pread import PositionalFiles, stored_npy_range

_JPEG_MAGIC = b"\xff\xd8\xff"


def _as_labels(labels: Any, n: int, where: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != n:
        raise DataError(f"{where}: labels must be a 1-D array of {n} integers, got shape {array.shape}")
    if array.dtype.kind not in "iub":
        raise DataError(f"{where}: labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def _as_str_list(values: Any, where: str, what: str, n: int | None = None) -> list[str]:
    array = np.asarray(values)
    if array.ndim != 1 or (n is not None and array.shape[0] != n):
        expected = f"{n} " if n is not None else ""
        raise DataError(f"{where}: {what} must be a 1-D list of {expected}strings, got shape {array.shape}")
    return [str(v) for v in array.tolist()]


def _load_npz(path: Path, where: str) -> Any:
    """``np.load(path)`` without pickle; a file NumPy cannot read raises DataError naming ``where``."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:  # BadZipFile: a truncated or damaged file
        raise DataError(f"{where}: cannot read as a NumPy .npz archive ({error})") from error


class ArraySource(ImageSource):
    """Images held in a uint8 array: N x H x W x C (C = 1, 3 or 4) or N x H x W (grayscale)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        *,
        origin: str = "array",
        key: str = "images",
    ) -> None:
        where = f"{origin}, key '{key}'"
        images = np.asarray(images)
        layout = "uint8 array N x H x W x C (C = 1, 3 or 4) or N x H x W"
        if images.dtype != np.uint8:
            raise DataError(
                f"{where}: expected a {layout}, got dtype {images.dtype}; convert it to uint8 0..255"
            )
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3, 4)):
            raise DataError(f"{where}: expected a {layout}, got shape {images.shape}")
        if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
            raise DataError(f"{where}: the array holds no images (shape {images.shape})")
        if images.ndim == 4 and images.shape[3] == 1:
            images = images[..., 0]
        self._images = images
        n = images.shape[0]
        self._labels = None if labels is None else _as_labels(labels, n, f"{origin}, labels")
        self._classes = None if classes is None else _as_str_list(classes, f"{origin}, classes", "classes")
        self._names = None if names is None else _as_str_list(names, f"{origin}, names", "names", n)
        self.description = _describe(origin, n, self._classes)

    @classmethod
    def from_npz(cls, path: str | os.PathLike[str]) -> ArraySource:
        """Read images (key ``images``, ``x`` or ``data``) and optional ``labels``/``y``, ``classes``,
        ``names``/``files`` from an .npz file."""
        path = Path(path).expanduser()
        where = f"--data {path}"
        with _load_npz(path, where) as archive:
            keys = list(archive.files)
            image_key = next((k for k in ("images", "x", "data") if k in keys), None)
            if image_key is None:
                raise DataError(
                    f"{where}: no image array found; expected key 'images' (or 'x'/'data') holding a uint8 "
                    f"N x H x W x C or N x H x W array, found keys {keys}"
                )
            label_key = next((k for k in ("labels", "y") if k in keys), None)
            name_key = next((k for k in ("names", "files") if k in keys), None)
            try:
                images = archive[image_key]
                labels = archive[label_key] if label_key else None
                classes = archive["classes"] if "classes" in keys else None
                names = archive[name_key] if name_key else None
            except ValueError as error:  # object arrays need pickle, which we refuse
                raise DataError(f"{where}: cannot read arrays without pickle ({error})") from error
        return cls(images, labels, classes, names, origin=f"file {path}", key=image_key)

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def load(self, index: int) -> Image.Image:
        pixels = self._images[self._check_index(index)]
        if pixels.ndim == 2:
            return Image.fromarray(pixels, mode="L").convert("RGB")
        mode = "RGB" if pixels.shape[2] == 3 else "RGBA"
        return to_rgb(Image.fromarray(np.ascontiguousarray(pixels), mode=mode))


def _jpeg_splits(keys: Sequence[str]) -> list[str]:
    return [k[len("jpeg_") :] for k in keys if k.startswith("jpeg_")]


class JpegBytesSource(ImageSource):
    """One split of an archive of concatenated image files (keys ``jpeg_S``, ``off_S``, ``y_S``, ``files_S``,
    ``classes``). Image i is the bytes ``jpeg_S[off_S[i]:off_S[i + 1]]``. ``split=None`` picks "train" when
    present, else the first split in the file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str | None = None,
        *,
        label: str | None = None,
        resident: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        where = f"--data {path}"
        if not self.path.is_file():
            raise DataError(f"{where}: file does not exist")
        with _load_npz(self.path, where) as archive:
            keys = list(archive.files)
            splits = _jpeg_splits(keys)
            if not splits:
                raise DataError(f"{where}: not an image-bytes archive (no 'jpeg_<split>' keys; found {keys})")
            if split is None:
                split = "train" if "train" in splits else splits[0]
            if split not in splits:
                raise DataError(
                    f"--split {split}: no such split in {self.path}; choose from {', '.join(splits)}"
                )
            if f"off_{split}" not in keys:
                raise DataError(f"{where}: key 'off_{split}' (int64 offsets of split '{split}') is missing")
            self.split = split
            stored = None if resident else stored_npy_range(self.path, f"jpeg_{split}.npy")
            if stored is None:  # compressed (np.savez_compressed), or asked to: the bytes are held in RAM
                self._bytes: np.ndarray | None = archive[f"jpeg_{split}"]
                layout = (self._bytes.dtype, self._bytes.shape, len(self._bytes))
            else:  # stored: each image is read from the file when needed (`raw_bytes`)
                self._bytes, self._start = None, stored[0]
                layout = (stored[2], stored[3], stored[1])
                self._files = PositionalFiles([self.path])
            self._offsets = archive[f"off_{split}"].astype(np.int64)
            labels = archive[f"y_{split}"] if f"y_{split}" in keys else None
            names = archive[f"files_{split}"] if f"files_{split}" in keys else None
            classes = archive["classes"] if "classes" in keys else None
        self._check_layout(where, *layout)
        n = len(self._offsets) - 1
        self._labels = None if labels is None else _as_labels(labels, n, f"{where}, key 'y_{split}'")
        self._names = (
            None if names is None else _as_str_list(names, f"{where}, key 'files_{split}'", "names", n)
        )
        self._classes = (
            None if classes is None else _as_str_list(classes, f"{where}, key 'classes'", "classes")
        )
        kind = label if label is not None else f"archive {self.path} split '{split}'"
        self.description = _describe(kind, n, self._classes)

    @property
    def resident(self) -> bool:
        """Whether the split's image bytes are held in memory (a compressed archive) rather than read from the
        file image by image (an archive written with `np.savez`, as ../shared/datasets' are)."""
        return self._bytes is not None

    def _check_layout(self, where: str, dtype: np.dtype, shape: tuple[int, ...], length: int) -> None:
        split = self.split
        if dtype != np.uint8 or len(shape) != 1:
            raise DataError(
                f"{where}: key 'jpeg_{split}' must be a 1-D uint8 array of concatenated image files"
            )
        off = self._offsets
        if off.ndim != 1 or len(off) < 2:
            raise DataError(f"{where}: key 'off_{split}' must be a 1-D int64 array of N + 1 offsets (N >= 1)")
        if off[0] < 0 or off[-1] > length or np.any(np.diff(off) < 0):
            raise DataError(f"{where}: key 'off_{split}' must be non-decreasing offsets within 0..{length}")

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def raw_bytes(self, index: int) -> bytes:
        """The encoded file of image ``index``."""
        index = self._check_index(index)
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        if self._bytes is not None:
            return self._bytes[start:end].tobytes()
        return self._files.read(0, self._start + start, end - start, f"image {self.name(index)}")

    def load(self, index: int) -> Image.Image:
        data = self.raw_bytes(index)
        formats = ["JPEG"] if data.startswith(_JPEG_MAGIC) else None  # skips format probing (faster)
        return open_rgb(io.BytesIO(data), formats)


def _npz_has_jpeg_keys(path: Path) -> bool:
    """Whether the .npz archive ``path`` holds image bytes (``jpeg_*`` keys) rather than pixel arrays."""
    with _load_npz(path, f"--data {path}") as archive:
        return bool(_jpeg_splits(archive.files))


EMBEDDED_NAME = "embedded"
"""The ``--data`` value (also None or "") that selects the packaged CIFAR-10 test split."""


def embedded_source() -> JpegBytesSource:
    """The packaged CIFAR-10 test split (10,000 RGB 32 x 32 JPEG images, 10 classes)."""
    resource = importlib.resources.files("deepcluster.data") / "embedded" / "cifar10_test.npz"
    with importlib.resources.as_file(resource) as path:
        # held in memory (about 9 MB): the packaged file may be a temporary copy that as_file removes
        return JpegBytesSource(path, "test", label="embedded CIFAR-10 test split", resident=True)
