"""Streamed images (`data.cache=stream`): decoded when a batch needs them, no decoded cache at all.

`StreamedImages` stands where the decoded uint8 tensor [M, 3, S, S] stands: it has its `shape`, and indexing it
(a slice, or a tensor or array of rows) gives a lazy selection whose `.to(device)` decodes those images, with
exactly the decode of the cache (`decode.decode_into`: the same resize and crop, so a streamed run equals a
cached one bit for bit). Memory is O(batch): nothing but the batch being decoded and the ones prefetched.

`batches(images, rows)` yields the decoded batches of a list of row selections in order; on streamed images the
next `PREFETCH` batches are decoded by a background thread (its decode spread over the decode threads) while the
caller trains on the current one: data preparation overlaps the step. On a tensor it is plain indexing.

The images that cannot be decoded must be known before training (the run's image index is fixed by them), so
`stream_images` first decodes every image once and keeps nothing (`decode.decode_images(..., keep=False)`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from deepcluster.data.decode import DecodedImages, decode_images, decode_into
from deepcluster.data.sources import DataError, ImageSource

PREFETCH = 2
"""Batches decoded ahead of the one in use."""


class StreamedImages:
    """The kept images `rows` (source indices) of `source`, decoded on demand at `size` px (see module notes)."""

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(
        self, source: ImageSource, rows: np.ndarray, size: int, inner_size: int | None, threads: int | None
    ) -> None:
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)
        self.size, self.inner_size = size, inner_size
        self.threads = threads or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), 3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> StreamedImages:
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        picked = StreamedImages.__new__(StreamedImages)
        picked.__dict__.update(self.__dict__)  # the same decode pool: selections of one run share its threads
        picked.rows = self.rows[key]
        return picked

    def to(self, device: torch.device | str, non_blocking: bool = False) -> torch.Tensor:
        """Decode the selected images: uint8 [len, 3, S, S] on `device`."""
        return self.decode().to(device, non_blocking=non_blocking)

    def decode(self) -> torch.Tensor:
        out = torch.empty(self.shape, dtype=torch.uint8)
        chunks = np.array_split(np.arange(len(self.rows)), min(self.threads, max(1, len(self.rows))))
        jobs = [self.pool().submit(self._decode_chunk, out, chunk) for chunk in chunks]
        for job in jobs:
            job.result()
        return out

    def _decode_chunk(self, out: torch.Tensor, positions: np.ndarray) -> None:
        for position in positions:
            index = int(self.rows[position])
            reason = decode_into(self.source, index, self.size, out[position], self.inner_size)
            if reason is not None:  # readable in the first pass, not now: the files changed under the run
                raise DataError(
                    f"{self.source.name(index)} could be decoded when the run started and cannot now ({reason}); "
                    "the data changed during the run: restore it, or start the run again"
                )

    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="stream")
            return self._pool

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


def batches(images: torch.Tensor | StreamedImages, rows: Iterable[Any]) -> Iterator[torch.Tensor]:
    """`images[r]` for each selection `r` of `rows`, in order: host tensors are indexed, streamed images decoded
    `PREFETCH` batches ahead by one background thread while the caller works on the current batch."""
    if not isinstance(images, StreamedImages):
        for selection in rows:
            yield images[selection]
        return
    ahead: deque[Future[torch.Tensor]] = deque()
    todo = iter(rows)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as feeder:
        try:
            while True:
                while len(ahead) <= PREFETCH:
                    selection = next(todo, None)
                    if selection is None:
                        break
                    ahead.append(feeder.submit(images[selection].decode))
                if not ahead:
                    return
                yield ahead.popleft().result()
        finally:
            for job in ahead:
                job.cancel()


def stream_images(source: ImageSource, size: int, **options: Any) -> DecodedImages:
    """Find the readable images of `source` (every image decoded once, nothing kept; bad ones reported and
    skipped as `decode_images`, which takes the same `options`, does) and return them as `StreamedImages`."""
    return streamed(source, decode_images(source, size, keep=False, **options), **options)


def streamed(source: ImageSource, found: DecodedImages, **options: Any) -> DecodedImages:
    """`found` (its readable images, from `stream_images` here or in another process) as `StreamedImages`
    decoded with `decode_images`'s `options` (num_threads, inner_size)."""
    images = StreamedImages(
        source, found.indices, found.size, options.get("inner_size"), options.get("num_threads")
    )
    return dataclasses.replace(found, images=images)
