"""Sources of image files on disk: :class:`FolderSource` (a scanned folder) and :class:`FileListSource` (a list)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from deepcluster.data.sources.base import DataError, ImageSource, _describe, _format_count, open_rgb

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
        return open_rgb(self.path(index))

    def name(self, index: int) -> str:
        return self._paths[self._check_index(index)].as_posix()


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
        return open_rgb(self.path(index))

    def name(self, index: int) -> str:
        return self._relative[self._check_index(index)]
