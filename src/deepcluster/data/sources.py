"""Image sources: finite, indexable collections of images (folders, arrays, JPEG archives, torchvision sets).

Every source returns RGB :class:`PIL.Image.Image` objects from :meth:`ImageSource.load`. True labels, when a
source has them, are only meant for evaluation. Transparent images are composited on a white background.
"""

from __future__ import annotations

import importlib.resources
import io
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
"""File extensions (lower case) that :class:`FolderSource` treats as images."""

LIST_EXTENSIONS: tuple[str, ...] = (".txt", ".lst")
"""File extensions that :func:`open_source` reads as image lists."""

_WHITE = (255, 255, 255)
_JPEG_MAGIC = b"\xff\xd8\xff"


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


def _format_count(n: int) -> str:
    return f"{n:,} image{'s' if n != 1 else ''}"


def _describe(kind: str, n: int, classes: Sequence[str] | None) -> str:
    detail = f"{len(classes)} classes" if classes is not None else "no labels"
    return f"{kind} ({_format_count(n)}, {detail})"


class ImageSource(ABC):
    """A finite, indexable collection of images with optional true labels (used for evaluation only)."""

    description: str = "image source"

    @abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB; raises on a corrupt or unreadable item."""

    def name(self, index: int) -> str:
        """A human-readable name of image ``index`` (path, archive file name, or the index)."""
        self._check_index(index)
        return f"{index}"

    @property
    def labels(self) -> np.ndarray | None:
        """int64 [N] true class ids, or None."""
        return None

    @property
    def classes(self) -> list[str] | None:
        """Class names in label order, or None."""
        return None

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"image index {index} out of range for {self.description} (valid: 0..{n - 1})")
        return int(index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _scan_images(root: Path) -> list[Path]:
    """Relative paths of all images under ``root``, sorted by path components; hidden entries skipped."""
    found: list[Path] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # symlink cycle
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        rel_dir = Path(dirpath).relative_to(root)
        for filename in filenames:
            if _is_hidden(filename) or os.path.splitext(filename)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            found.append(rel_dir / filename)
    found.sort(key=lambda p: p.parts)
    return found


class FolderSource(ImageSource):
    """All images under a folder, scanned recursively in sorted order.

    When every image lies inside a first-level sub-folder, the sorted sub-folder names are the classes and
    each image's label is its sub-folder; otherwise (flat or mixed layout) there are no labels.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"--data {root}: folder does not exist")
        self._paths = _scan_images(self.root)
        if not self._paths:
            raise DataError(
                f"--data {root}: no images found in folder {self.root} (searched recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)}; case-insensitive, hidden files skipped)"
            )
        self._classes: list[str] | None = None
        self._labels: np.ndarray | None = None
        if all(len(p.parts) >= 2 for p in self._paths):
            self._classes = sorted({p.parts[0] for p in self._paths})
            lookup = {c: i for i, c in enumerate(self._classes)}
            self._labels = np.array([lookup[p.parts[0]] for p in self._paths], dtype=np.int64)
        self.description = _describe(f"folder {self.root}", len(self._paths), self._classes)

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> Path:
        """Full path of image ``index``."""
        return self.root / self._paths[self._check_index(index)]

    def load(self, index: int) -> Image.Image:
        with Image.open(self.path(index)) as image:
            image.load()
            return to_rgb(image)

    def name(self, index: int) -> str:
        return self._paths[self._check_index(index)].as_posix()

    @property
    def labels(self) -> np.ndarray | None:
        return self._labels

    @property
    def classes(self) -> list[str] | None:
        return None if self._classes is None else list(self._classes)


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
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"{where}: cannot read as a NumPy .npz archive ({error})") from error
        with archive:
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

    def name(self, index: int) -> str:
        index = self._check_index(index)
        return self._names[index] if self._names is not None else f"{index}"

    @property
    def labels(self) -> np.ndarray | None:
        return self._labels

    @property
    def classes(self) -> list[str] | None:
        return None if self._classes is None else list(self._classes)


def _jpeg_splits(keys: Sequence[str]) -> list[str]:
    return [k[len("jpeg_") :] for k in keys if k.startswith("jpeg_")]


class JpegBytesSource(ImageSource):
    """One split of an archive of concatenated image files (keys ``jpeg_S``, ``off_S``, ``y_S``, ``files_S``,
    ``classes``). Image i is the bytes ``jpeg_S[off_S[i]:off_S[i + 1]]``. ``split=None`` picks "train" when
    present, else the first split in the file."""

    def __init__(
        self, path: str | os.PathLike[str], split: str | None = None, *, label: str | None = None
    ) -> None:
        self.path = Path(path).expanduser()
        where = f"--data {path}"
        if not self.path.is_file():
            raise DataError(f"{where}: file does not exist")
        try:
            archive = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"{where}: cannot read as a NumPy .npz archive ({error})") from error
        with archive:
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
            self._bytes = archive[f"jpeg_{split}"]
            self._offsets = archive[f"off_{split}"].astype(np.int64)
            labels = archive[f"y_{split}"] if f"y_{split}" in keys else None
            names = archive[f"files_{split}"] if f"files_{split}" in keys else None
            classes = archive["classes"] if "classes" in keys else None
        self._check_layout(where)
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

    def _check_layout(self, where: str) -> None:
        split = self.split
        if self._bytes.dtype != np.uint8 or self._bytes.ndim != 1:
            raise DataError(
                f"{where}: key 'jpeg_{split}' must be a 1-D uint8 array of concatenated image files"
            )
        off = self._offsets
        if off.ndim != 1 or len(off) < 2:
            raise DataError(f"{where}: key 'off_{split}' must be a 1-D int64 array of N + 1 offsets (N >= 1)")
        if off[0] < 0 or off[-1] > len(self._bytes) or np.any(np.diff(off) < 0):
            raise DataError(
                f"{where}: key 'off_{split}' must be non-decreasing offsets within 0..{len(self._bytes)}"
            )

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def raw_bytes(self, index: int) -> bytes:
        """The encoded file of image ``index``."""
        index = self._check_index(index)
        return self._bytes[self._offsets[index] : self._offsets[index + 1]].tobytes()

    def load(self, index: int) -> Image.Image:
        data = self.raw_bytes(index)
        formats = ["JPEG"] if data.startswith(_JPEG_MAGIC) else None  # skips format probing (faster)
        with Image.open(io.BytesIO(data), formats=formats) as image:
            image.load()
            return to_rgb(image)

    def name(self, index: int) -> str:
        index = self._check_index(index)
        return self._names[index] if self._names is not None else f"{index}"

    @property
    def labels(self) -> np.ndarray | None:
        return self._labels

    @property
    def classes(self) -> list[str] | None:
        return None if self._classes is None else list(self._classes)


# name -> (torchvision class name, allowed splits, folder torchvision looks for under root)
_TORCHVISION_SETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "cifar10": ("CIFAR10", ("train", "test"), "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", ("train", "test"), "cifar-100-python"),
    "stl10": ("STL10", ("train", "test", "unlabeled"), "stl10_binary"),
    "mnist": ("MNIST", ("train", "test"), "MNIST/raw"),
    "fashion-mnist": ("FashionMNIST", ("train", "test"), "FashionMNIST/raw"),
    "svhn": ("SVHN", ("train", "test", "extra"), "train_32x32.mat / test_32x32.mat / extra_32x32.mat"),
}
_ALIASES: dict[str, str] = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "stl-10": "stl10",
}

TORCHVISION_NAMES: tuple[str, ...] = tuple(_TORCHVISION_SETS)
"""Data set names accepted by :class:`TorchvisionSource` (also aliases such as fashion_mnist, cifar-10)."""


def canonical_dataset_name(name: str) -> str | None:
    """The canonical torchvision data set name for ``name`` (case-insensitive), or None if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in _TORCHVISION_SETS else None


class TorchvisionSource(ImageSource):
    """A standard data set read through torchvision (never downloads unless ``download=True``)."""

    def __init__(
        self, name: str, root: str | os.PathLike[str] = "./data", split: str = "train", download: bool = False
    ) -> None:
        import torchvision.datasets as datasets

        key = canonical_dataset_name(name)
        if key is None:
            raise DataError(
                f"--data {name}: not a known data set name (choose from {', '.join(TORCHVISION_NAMES)})"
            )
        class_name, splits, folder = _TORCHVISION_SETS[key]
        if split not in splits:
            raise DataError(f"--split {split}: {key} has no such split; choose from {', '.join(splits)}")
        self.dataset_name = key
        self.split = split
        self.root = Path(root).expanduser()
        dataset_cls = getattr(datasets, class_name)
        kwargs: dict[str, Any] = {"download": download}
        if key in ("stl10", "svhn"):
            kwargs["split"] = split
        else:
            kwargs["train"] = split == "train"
        try:
            self._dataset = dataset_cls(str(self.root), **kwargs)
        except RuntimeError as error:
            if download:
                raise DataError(f"--data {key}: download into {self.root} failed ({error})") from error
            raise DataError(
                f"--data {key}: files of split '{split}' not found or corrupt under {self.root.resolve()} "
                f"(torchvision looks for {folder} there; {error}). Pass --download to fetch them, or point "
                f"--data-root at the folder that holds them."
            ) from error
        except ImportError as error:
            raise DataError(
                f"--data {key}: reading this data set needs a missing package ({error})"
            ) from error
        except OSError as error:
            raise DataError(
                f"--data {key}: could not fetch or read the files under {self.root} ({error})"
            ) from error
        self._labels = self._read_labels()
        self._classes = self._read_classes()
        self.description = _describe(
            f"{key} split '{split}' from {self.root}", len(self._dataset), self._classes
        )

    def _read_labels(self) -> np.ndarray | None:
        raw = getattr(self._dataset, "targets", None)
        if raw is None:
            raw = getattr(self._dataset, "labels", None)
        if raw is None:
            return None
        labels = np.asarray(raw.numpy() if hasattr(raw, "numpy") else raw).astype(np.int64).reshape(-1)
        if labels.size == 0 or np.all(labels < 0):  # e.g. STL-10 'unlabeled': every label is -1
            return None
        return labels

    def _read_classes(self) -> list[str] | None:
        if self._labels is None:
            return None
        classes = getattr(self._dataset, "classes", None)
        if classes:
            return [str(c) for c in classes]
        return [str(i) for i in range(int(self._labels.max()) + 1)]  # SVHN: digits 0..9

    def __len__(self) -> int:
        return len(self._dataset)

    def load(self, index: int) -> Image.Image:
        image = self._dataset[self._check_index(index)][0]
        return to_rgb(image)

    @property
    def labels(self) -> np.ndarray | None:
        return self._labels

    @property
    def classes(self) -> list[str] | None:
        return None if self._classes is None else list(self._classes)


class FileListSource(ImageSource):
    """Images listed in a text file, one path per line, with an optional integer label as second column.

    Relative paths are resolved against the list file's folder; blank lines and lines starting with ``#`` are
    ignored. Either every line has a label or none does. Files are only opened when loaded.
    """

    def __init__(self, list_file: str | os.PathLike[str]) -> None:
        self.list_file = Path(list_file).expanduser()
        where = f"--data {list_file}"
        if not self.list_file.is_file():
            raise DataError(f"{where}: list file does not exist")
        base = self.list_file.parent
        paths: list[str] = []
        labels: list[int | None] = []
        with open(self.list_file, encoding="utf-8") as handle:
            for line_number, raw in enumerate(handle, start=1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.rsplit(maxsplit=1)
                label: int | None = None
                if len(parts) == 2:
                    try:
                        label = int(parts[1])
                    except ValueError:
                        label = None
                path = parts[0] if label is not None else line
                paths.append(path)
                labels.append(label)
                if (label is None) != (labels[0] is None):
                    raise DataError(
                        f"{where}, line {line_number}: some lines have an integer label and some do not; "
                        "give a label on every line or on none"
                    )
        if not paths:
            raise DataError(f"{where}: the list file names no images (one image path per line)")
        self._relative = paths  # strings only: a Path object per image would cost ~3x the memory at millions
        self._base = base
        self._labels = None if labels[0] is None else np.array(labels, dtype=np.int64)
        self.description = (
            f"list {self.list_file} ({_format_count(len(paths))}, "
            f"{'integer labels' if self._labels is not None else 'no labels'})"
        )

    def __len__(self) -> int:
        return len(self._relative)

    def path(self, index: int) -> Path:
        """Full path of image ``index``."""
        return self._base / Path(self._relative[self._check_index(index)]).expanduser()

    def load(self, index: int) -> Image.Image:
        with Image.open(self.path(index)) as image:
            image.load()
            return to_rgb(image)

    def name(self, index: int) -> str:
        return self._relative[self._check_index(index)]

    @property
    def labels(self) -> np.ndarray | None:
        return self._labels


EMBEDDED_NAME = "embedded"
"""The ``--data`` value (also None or "") that selects the packaged CIFAR-10 test split."""


def embedded_source() -> JpegBytesSource:
    """The packaged CIFAR-10 test split (10,000 RGB 32 x 32 JPEG images, 10 classes)."""
    resource = importlib.resources.files("deepcluster.data") / "embedded" / "cifar10_test.npz"
    with importlib.resources.as_file(resource) as path:
        return JpegBytesSource(path, "test", label="embedded CIFAR-10 test split")


def _npz_has_jpeg_keys(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return bool(_jpeg_splits(archive.files))
    except (OSError, ValueError) as error:
        raise DataError(f"--data {path}: cannot read as a NumPy .npz archive ({error})") from error


def open_source(
    spec: str | os.PathLike[str] | None,
    root: str | None = None,
    split: str | None = None,
    download: bool = False,
) -> ImageSource:
    """Open the image source named by ``spec`` (the ``--data`` option).

    Resolution order: None, "" or "embedded" -> packaged CIFAR-10 test split; an existing folder ->
    :class:`FolderSource`; an existing .npz -> :class:`JpegBytesSource` when it has ``jpeg_*`` keys, else
    :meth:`ArraySource.from_npz`; an existing .txt/.lst -> :class:`FileListSource`; a torchvision data set
    name -> :class:`TorchvisionSource` (``root`` default "./data", ``split`` default "train"). ``split`` is
    ignored by sources without splits (folders, arrays, lists).
    """
    if spec is None or str(spec).strip() in ("", EMBEDDED_NAME):
        if split is not None and split != "test":
            raise DataError(f"--split {split}: the embedded data set only has the split 'test'")
        return embedded_source()
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return FolderSource(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            if _npz_has_jpeg_keys(path):
                return JpegBytesSource(path, split)
            return ArraySource.from_npz(path)
        if suffix in LIST_EXTENSIONS:
            return FileListSource(path)
        raise DataError(
            f"--data {text}: unsupported file type '{path.suffix}'; give a folder of images, an .npz "
            f"archive, a {'/'.join(LIST_EXTENSIONS)} list of image paths, or a data set name"
        )
    key = canonical_dataset_name(text)
    if key is not None:
        return TorchvisionSource(key, root if root is not None else "./data", split or "train", download)
    choices = ", ".join((EMBEDDED_NAME,) + TORCHVISION_NAMES)
    raise DataError(
        f"--data {text}: no such file or folder, and not a known data set name (choose from {choices})"
    )
