"""Small square thumbnails of a source's images, decoded once and kept on disk for every later report.

Layout in the cache folder, for thumbnails of ``S`` pixels:

- ``thumbnails-S.bin``: the made thumbnails, uint8 rows of S x S x 3, appended in the order they were made;
- ``thumbnails-S-index.npy``: int64 [N], one entry per source image: its row in the .bin file, ``-1`` not
  made yet, ``-2`` unreadable (shown as a grey tile, never decoded again);
- ``thumbnails-S.json``: the image count and source description the files belong to (a different source
  starts a fresh cache);
- ``thumbnails-S.lock``: serialises writers of several processes (POSIX).

Only made thumbnails take disk space (a report of a million-image run decodes only the images it shows),
and the files stay small when a run folder is copied (no sparse file that a copy would fill).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from deepcluster.data.decode import square_image
from deepcluster.data.sources import ImageSource

try:  # POSIX only: elsewhere several processes must not fill the same cache at once
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

GREY = 128
"""Value of every pixel of the tile shown for an image that cannot be read."""

NOT_MADE = -1
UNREADABLE = -2
_FORMAT_VERSION = 1
_CHUNK = 256  # thumbnails decoded, then written, per step: bounds memory and loses little on a crash
_MAX_LOGGED = 10  # unreadable images logged by name per cache object

log = logging.getLogger(__name__)


class ThumbnailCache:
    """Square ``size`` x ``size`` RGB thumbnails of ``source``'s images, made on demand, kept in ``folder``.

    A thumbnail is the image's shorter side resized to ``size`` and centre-cropped
    (:func:`deepcluster.data.decode.square_image`). Nothing is decoded or written before :meth:`get` asks
    for an image that is not made yet; a later cache object on the same folder (another process) reuses
    every thumbnail made before. Images that cannot be read give a grey tile and are remembered as such.
    """

    def __init__(self, folder: Path, source: ImageSource, size: int = 64, threads: int | None = None) -> None:
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"thumbnail size {size!r}: must be a positive number of pixels")
        if threads is not None and threads < 1:
            raise ValueError(f"threads {threads}: must be at least 1 (or None for a few)")
        self.folder = Path(folder)
        self.source = source
        self.size = int(size)
        self.threads = threads if threads is not None else max(1, min(8, os.cpu_count() or 1))
        self.decoded = 0
        """Images this object decoded (or tried to) so far."""
        self.unreadable = 0
        """Of those, images that could not be read (grey tiles)."""
        self._count = len(source)
        self._row_shape = (self.size, self.size, 3)
        self._row_bytes = self.size * self.size * 3
        stem = f"thumbnails-{self.size}"
        self._bin_path = self.folder / f"{stem}.bin"
        self._index_path = self.folder / f"{stem}-index.npy"
        self._meta_path = self.folder / f"{stem}.json"
        self._lock_path = self.folder / f"{stem}.lock"
        self._index: np.memmap | None = None
        self._thread_lock = threading.Lock()

    def get(self, indices: np.ndarray) -> np.ndarray:
        """uint8 [n, size, size, 3] thumbnails of the source images ``indices`` (in that order, repeats
        allowed); the missing ones are decoded now (only those) and stored for later."""
        wanted = np.asarray(indices)
        if wanted.ndim != 1 or (wanted.size and wanted.dtype.kind not in "iu"):
            raise ValueError(f"indices: expected a 1-D array of integers, got {wanted.dtype} {wanted.shape}")
        wanted = wanted.astype(np.int64)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self._count):
            bad = wanted[(wanted < 0) | (wanted >= self._count)][0]
            raise IndexError(f"image index {bad} out of range for {self.source.description}")
        out = np.empty((len(wanted), *self._row_shape), dtype=np.uint8)
        if not wanted.size:
            return out
        with self._thread_lock:
            index = self._open()
            if np.any(index[wanted] == NOT_MADE):
                with self._file_lock():
                    missing = np.unique(wanted[index[wanted] == NOT_MADE])  # again: another process may
                    for start in range(0, len(missing), _CHUNK):  # have made some meanwhile
                        self._make(missing[start : start + _CHUNK], index)
            rows = np.asarray(index[wanted])
            out[rows == UNREADABLE] = GREY
            stored = rows >= 0
            if np.any(stored):
                count = int(rows.max()) + 1
                pixels = np.memmap(self._bin_path, dtype=np.uint8, mode="r", shape=(count, *self._row_shape))
                out[stored] = pixels[rows[stored]]
                del pixels
        return out

    def _open(self) -> np.memmap:
        """The index, memory-mapped; on first use, creates the cache files (or starts afresh when they belong
        to another source or are damaged)."""
        if self._index is not None:
            return self._index
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._file_lock():
            index = self._existing_index()
            if index is None:
                for path in (self._bin_path, self._index_path, self._meta_path):
                    path.unlink(missing_ok=True)
                temporary = self._index_path.with_name(f".{self._index_path.name}.{os.getpid()}.tmp")
                fresh = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.int64, shape=(self._count,))
                fresh[:] = NOT_MADE
                fresh.flush()
                del fresh
                os.replace(temporary, self._index_path)
                self._bin_path.touch()
                meta_temporary = self._meta_path.with_name(f".{self._meta_path.name}.{os.getpid()}.tmp")
                meta_temporary.write_text(json.dumps(self._meta(), indent=1) + "\n")
                os.replace(meta_temporary, self._meta_path)
                index = np.load(self._index_path, mmap_mode="r+")
        self._index = index
        return index

    def _meta(self) -> dict[str, object]:
        return {
            "version": _FORMAT_VERSION,
            "size": self.size,
            "count": self._count,
            "source": self.source.description,
        }

    def _existing_index(self) -> np.memmap | None:
        """The stored index when the files exist, belong to this source and are consistent, else None."""
        try:
            meta = json.loads(self._meta_path.read_text())
            index = np.load(self._index_path, mmap_mode="r+")
            stored_rows = self._bin_path.stat().st_size // self._row_bytes
        except (OSError, ValueError):
            return None
        if meta != self._meta() or index.dtype != np.int64 or index.shape != (self._count,):
            return None
        if index.size and (index.min() < UNREADABLE or index.max() >= stored_rows):
            log.warning("thumbnail cache %s is damaged; making the thumbnails again", self.folder)
            return None
        return index

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        with open(self._lock_path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _thumbnail(self, index: int) -> np.ndarray | str:
        """The thumbnail of source image ``index``, or why it cannot be read."""
        try:
            image = square_image(self.source.load(int(index)), self.size)
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
            if pixels.shape != self._row_shape:
                raise ValueError(f"decoded to shape {pixels.shape} instead of {self._row_shape}")
            return pixels
        except Exception as error:  # any unreadable image becomes a grey tile, never a failed report
            return f"{type(error).__name__}: {error}"

    def _name(self, index: int) -> str:
        try:
            return self.source.name(int(index))
        except Exception:
            return str(index)

    def _make(self, missing: np.ndarray, index: np.memmap) -> None:
        """Decode ``missing`` source images, append them to the .bin file, then record them in the index
        (in that order: an interrupted write leaves entries unmade, never pointing at a partial row)."""
        if len(missing) > 1 and self.threads > 1:
            with ThreadPoolExecutor(max_workers=min(self.threads, len(missing))) as pool:
                tiles = list(pool.map(self._thumbnail, missing.tolist()))
        else:
            tiles = [self._thumbnail(i) for i in missing.tolist()]
        self.decoded += len(missing)
        good = [i for i, tile in enumerate(tiles) if not isinstance(tile, str)]
        for position, tile in enumerate(tiles):
            if isinstance(tile, str):
                if self.unreadable < _MAX_LOGGED:
                    log.warning(
                        "thumbnail of image %s: cannot read it (%s)", self._name(missing[position]), tile
                    )
                self.unreadable += 1
        with open(self._bin_path, "r+b") as handle:
            handle.seek(0, os.SEEK_END)
            first_row = handle.tell() // self._row_bytes
            handle.truncate(first_row * self._row_bytes)  # drops a partial row left by an interrupted write
            handle.seek(first_row * self._row_bytes)
            if good:
                handle.write(np.stack([tiles[i] for i in good]).tobytes())
            handle.flush()
        rows = np.full(len(missing), UNREADABLE, dtype=np.int64)
        rows[good] = first_row + np.arange(len(good), dtype=np.int64)
        index[missing] = rows
        index.flush()
