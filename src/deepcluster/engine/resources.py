"""What a run holds while it trains and gives back at the end: its processes, run directory, log file, decoded
images (in RAM, a memory-mapped file, or streamed: `data.cache`), spill files and TensorBoard writer."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcluster.config import ConfigError, DataConfig, TrainConfig, dump_config
from deepcluster.data.decode import DecodedImages, decode_images
from deepcluster.data.sources import ImageSource
from deepcluster.data.stream import stream_images, streamed
from deepcluster.engine.distributed import Processes, join_processes
from deepcluster.storage import RunDir, RunLock, atomic_write_text

log = logging.getLogger("deepcluster")


@dataclass
class RunImages:
    """The images a run trains on, once decoded."""

    images: torch.Tensor
    """uint8 [N, 3, S, S], on the host or on the run's GPU."""
    indices: np.ndarray
    """Source index of each image (unreadable ones are skipped)."""
    name_of: Callable[[int], str]
    """Source index -> the image's name (path, file name)."""
    true_labels: np.ndarray | None
    """True classes of the images, for evaluation only."""


class RunResources:
    """Joins the processes and prepares the run directory on `open`; `close` releases everything it took."""

    def __init__(self, data: DataConfig, device: torch.device, resume: bool) -> None:
        self.data = data
        """The run's data settings (decoding, caches, memory limit): set before the run and never fitted."""
        self.device = device
        self.resume = resume
        self.procs = Processes(device=device)
        self.run_dir: RunDir | None = None
        self.writer: Any = None
        self._file_log: logging.Handler | None = None
        self._cache_path: Path | None = None
        self._lock: RunLock | None = None

    def open(self, config: TrainConfig, asked: TrainConfig) -> TrainConfig:
        """Join torchrun's processes (if any), choose and prepare the run directory for `config` (whose
        config.yaml is written at once, and request.yaml: the settings as `asked`), start the log file. Returns
        `config` with `run.out` filled in."""
        self.procs = procs = join_processes(self.device, config.run.dist_timeout_minutes)
        if config.run.out is None:
            stamp = procs.broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
            out = f"runs/{config.method}-{stamp}"
            config = dataclasses.replace(config, run=dataclasses.replace(config.run, out=out))
        self.run_dir = RunDir(config.run.out)
        if procs.is_main:  # the main process holds the run directory for all (RUN/.lock) until close()
            self.run_dir.prepare(
                resume=self.resume, lock=lambda: self._hold(RunLock(config.run.out, "train"))
            )
            if not self.resume:  # at once: from here on a kill leaves a run that --resume can start again
                atomic_write_text(self.run_dir.config, dump_config(config))
                asked_here = dataclasses.replace(
                    asked, run=dataclasses.replace(asked.run, out=config.run.out)
                )
                atomic_write_text(self.run_dir.request, dump_config(asked_here))
        procs.barrier()
        if procs.is_main:
            self._file_log = logging.FileHandler(self.run_dir.log_file)
            self._file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(self._file_log)
            if log.level == logging.NOTSET or log.level > logging.INFO:
                log.setLevel(logging.INFO)
        else:  # the main process speaks for all
            log.setLevel(logging.WARNING)
        return config

    def _hold(self, lock: RunLock) -> None:
        self._lock = lock.acquire()

    # ------------------------------------------------------------ images
    def decode(self, source: ImageSource, progress: bool) -> DecodedImages:
        """The run's images as `data.cache` says: decoded once into RAM (memory) or a memory-mapped file (disk;
        under torchrun, once per machine by its first process, the machine's other processes map it: one copy
        in the page cache), or streamed (readable images found once, decoded for each batch)."""
        data, procs, run_dir = self.data, self.procs, self._run_dir()
        options = {
            "num_threads": data.decode_threads,
            "progress": progress,
            "log": log,
            "inner_size": data.input_size,
        }

        def decode(cache_file: Path | None) -> DecodedImages:
            return decode_images(source, data.resize, cache_file=cache_file, **options)

        size = int(data.resize or 0)
        kind = self._cache_kind(len(source) * 3 * size * size)
        if kind == "stream":
            return self._stream(source, options)
        if not procs.distributed:  # under torchrun the images are always in a file: one copy per machine
            if kind == "disk":
                self._cache_path = self._cache_folder() / f"decoded-{run_dir.root.name}.npy"
            return decode(self._cache_path)
        path = self._cache_folder() / f"decoded-{run_dir.root.name}-node{procs.node}.npy"
        decoded = decode(path) if procs.local_rank == 0 else None
        if decoded is not None:
            self._cache_path = path
        kept = procs.all_gather_object(None if decoded is None else (decoded.indices, decoded.skipped))
        indices, skipped = kept[0]
        if decoded is not None:
            if not np.array_equal(decoded.indices, indices):
                raise ConfigError(
                    f"--data {data.data}: node {procs.node} could read other images than node 0; "
                    "every machine must see the same files"
                )
            return decoded
        mapped = np.load(path, mmap_mode="c")  # copy-on-write: never written, shared with the decoder's pages
        images = torch.from_numpy(mapped[: len(indices)])
        return DecodedImages(images=images, indices=indices, skipped=skipped, size=size)

    def _cache_kind(self, n_bytes: int) -> str:
        """data.cache, with auto resolved: memory when the decoded images fit data.memory_limit_gb, else stream
        (the log says so)."""
        data = self.data
        if data.cache != "auto":
            return data.cache
        if n_bytes <= data.memory_limit_gb * 1e9:
            return "memory"
        log.info(
            "decoded images (%.1f GB) exceed data.memory_limit_gb=%g: streamed (decoded for each batch, no cache; "
            "data.cache=disk keeps a memory-mapped one)",
            n_bytes / 1e9,
            data.memory_limit_gb,
        )
        return "stream"

    def _stream(self, source: ImageSource, options: dict[str, Any]) -> DecodedImages:
        """The readable images, streamed: the main process decodes each once to find them, the others take
        its list (every process must agree on the image index)."""
        resize, procs = self.data.resize, self.procs
        found = stream_images(source, resize, **options) if procs.is_main else None
        shared = procs.all_gather_object(None if found is None else (found.indices, found.skipped))[0]
        if found is not None:
            return found
        indices, skipped = shared
        empty = DecodedImages(images=None, indices=indices, skipped=skipped, size=int(resize or 0))
        return streamed(source, empty, **options)

    def allocate_features(self, n: int, d: int) -> np.ndarray:
        """Room for N x D float32 extracted values: in RAM up to data.memory_limit_gb, else a memory-mapped file
        in the cache folder (removed after the assignment)."""
        path = self._spill_file("features", "extracted values", n * d * 4)
        if path is None:
            return np.empty((n, d), dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))

    def _run_dir(self) -> RunDir:
        if self.run_dir is None:
            raise RuntimeError("RunResources.open() must run first")
        return self.run_dir

    def _cache_folder(self) -> Path:
        data = self.data
        return Path(data.cache_dir) if data.cache_dir else self._run_dir().root / "cache"

    def _spill_file(self, stem: str, what: str, n_bytes: int) -> Path | None:
        """Where an array of `n_bytes` (`what`, for the log) goes when it exceeds data.memory_limit_gb: the cache
        folder's `<stem>-<run>.npy`; None: it stays in RAM."""
        limit = self.data.memory_limit_gb
        if n_bytes <= limit * 1e9:
            return None
        path = self._cache_folder() / f"{stem}-{self._run_dir().root.name}.npy"
        log.info(
            "%s (%.1f GB) exceed data.memory_limit_gb=%g: memory-mapped %s", what, n_bytes / 1e9, limit, path
        )
        return path

    # ------------------------------------------------------------ logs
    def open_writer(self, purge_step: int | None) -> None:
        """The main process's TensorBoard writer (events after `purge_step` from an earlier life are dropped)."""
        if self.procs.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self._run_dir().tensorboard), purge_step=purge_step)

    def write_scalars(self, record: dict[str, Any], epoch: int) -> None:
        """Every number of an epoch's record to TensorBoard (main process)."""
        if self.writer is None:
            return
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.writer.flush()

    def close(self, finished: bool = False) -> None:
        """Remove the decoded-image cache, leave the process group (after waiting for every process when the
        run `finished`; a failed one may have lost the others), close the writer and the log file."""
        # A mapped file can be unlinked on POSIX: its pages stay valid while in use.
        if self._cache_path is not None:
            self._cache_path.unlink(missing_ok=True)
            if not self.data.cache_dir:
                with contextlib.suppress(OSError):  # the run's own cache folder, once empty
                    self._cache_path.parent.rmdir()
        self.procs.close(wait=finished)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._file_log is not None:
            log.removeHandler(self._file_log)
            self._file_log.close()
            self._file_log = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
