"""The layout of a run directory, the writes into it (all atomic) and every reader of what a run wrote."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepcluster.config import ConfigError
from deepcluster.storage.checkpoints import (
    load_checkpoint,
    load_run_checkpoint,
    read_header,
    rotate,
    save_checkpoint,
)
from deepcluster.storage.files import atomic_save_numpy, atomic_write_text

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.npy$")


class RunDir:
    """Paths of one run: config.yaml, checkpoints/, labels/, metrics.jsonl, labels.csv, events for TensorBoard."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def request(self) -> Path:
        """The settings as the run was asked for them, before any was resolved or fitted (what
        `--auto-resume` compares a new command with)."""
        return self.root / "request.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def previous_checkpoint(self) -> Path:
        """The checkpoint before the last one (kept by every save)."""
        return self.root / "checkpoints" / "previous.pt"

    @property
    def assigner(self) -> Path:
        """What puts new images into the run's clusters (centroids, PCA, transport scaling)."""
        return self.root / "assigner.pt"

    def write_assigner(self, method: str, state: dict[str, Any]) -> None:
        save_checkpoint(self.assigner, {"method": method, "state": state}, info={"kind": "assigner"})

    def read_assigner(self, trusted: bool = False) -> dict[str, Any] | None:
        """{"method", "state"} of assigner.pt, or None when the run has none (label transfer, older runs)."""
        return load_checkpoint(self.assigner, trusted) if self.assigner.is_file() else None

    @property
    def index_dir(self) -> Path:
        """The search index over the run's images (embeddings, names, the faiss index; `deepcluster index`)."""
        return self.root / "index"

    def checkpoint_fingerprint(self) -> str:
        """What changes whenever the run's network does: last.pt's SHA-256 (its size and time for older files)."""
        header = read_header(self.checkpoint) if self.checkpoint.is_file() else None
        if header is not None and "sha256" in header:
            return str(header["sha256"])
        stat = (self.checkpoint if self.checkpoint.is_file() else self.previous_checkpoint).stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def has_checkpoint(self) -> bool:
        return self.checkpoint.exists() or self.previous_checkpoint.exists()

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write checkpoints/last.pt atomically, the one it replaces kept as checkpoints/previous.pt."""
        save_checkpoint(
            self.checkpoint, state, before_replace=rotate(self.checkpoint, self.previous_checkpoint)
        )

    def load_checkpoint(self, trusted: bool = False, writable: bool = False) -> dict[str, Any]:
        """The last checkpoint, or the previous one when the last is damaged (said in the log, with how far back
        it goes). With `writable` (the caller holds the run), a damaged last.pt is set aside as
        checkpoints/damaged.pt, and an older-format file loaded with `trusted` is rewritten in the current
        format. Raises NoCheckpoint, DamagedCheckpoint (none readable) or UntrustedCheckpoint."""
        return load_run_checkpoint(self.checkpoint, self.previous_checkpoint, trusted, writable)

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def labels_csv(self) -> Path:
        return self.root / "labels.csv"

    @property
    def log_file(self) -> Path:
        return self.root / "train.log"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def features(self) -> Path:
        return self.root / "features.npy"

    @property
    def skipped(self) -> Path:
        return self.root / "skipped.txt"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.json"

    def epoch_labels(self, epoch: int) -> Path:
        return self.root / "labels" / f"epoch_{epoch:03d}.npy"

    # ------------------------------------------------------------ readers
    def read_history(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl, one per finished epoch ([] before the first)."""
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def last_epoch_labels(self) -> np.ndarray | None:
        """The labels of the last epoch's file (labels/epoch_NNN.npy), or None when there is none."""
        try:
            files = epoch_label_files(self.root)
        except FileNotFoundError:
            return None
        return np.load(files[-1][1])

    def read_evaluation(self) -> dict[str, Any] | None:
        """What `deepcluster evaluate` wrote (evaluation.json), or None."""
        return json.loads(self.evaluation.read_text()) if self.evaluation.is_file() else None

    def read_labels(self) -> LabelsTable:
        """The run's labels.csv."""
        return read_labels_csv(self.labels_csv, option="")

    def prepare(self, resume: bool, lock: Callable[[], None] | None = None) -> None:
        """Create the folder and check it is writable, then call `lock` (which takes the run's lock file); refuse
        to start a new run over an existing one."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            raise ConfigError(
                f"--out {self.root}: cannot write there ({error.strerror or error}); choose a writable folder"
            ) from error
        if lock is not None:
            lock()
        if not resume and self.has_checkpoint():
            raise ConfigError(
                f"--out {self.root}: a run already exists there; resume it with --resume {self.root} "
                "or choose another --out"
            )

    def write_metrics(self, history: Sequence[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl from the full history (kept in the checkpoint, so a resume stays consistent)."""
        atomic_write_text(self.metrics, "".join(json.dumps(record) + "\n" for record in history))

    def write_epoch_labels(self, epoch: int, labels: np.ndarray) -> None:
        atomic_save_numpy(self.epoch_labels(epoch), labels)

    def write_labels_csv(
        self,
        indices: np.ndarray,
        names: Sequence[str],
        labels: np.ndarray,
        true_labels: np.ndarray | None = None,
    ) -> None:
        """labels.csv: source index, image (path or name), cluster[, cluster_h1 ...][, true_label]; one row per
        kept image. `labels` is [N] or [N, H]: every further head gets a `cluster_h<i>` column."""
        columns = labels.reshape(len(labels), -1)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        heads = ["cluster"] + [f"cluster_h{h}" for h in range(1, columns.shape[1])]
        writer.writerow(["index", "image", *heads] + (["true_label"] if true_labels is not None else []))
        for row, (index, name) in enumerate(zip(indices, names, strict=True)):
            line = [int(index), name, *(int(v) for v in columns[row])]
            if true_labels is not None:
                line.append(int(true_labels[row]))
            writer.writerow(line)
        atomic_write_text(self.labels_csv, buffer.getvalue())

    def write_skipped(self, skipped: Sequence[tuple[str, str]]) -> None:
        atomic_write_text(self.skipped, "".join(f"{name}\t{reason}\n" for name, reason in skipped))


def open_run_dir(path: str | os.PathLike[str], what: str = "", needs_checkpoint: bool = False) -> RunDir:
    """The run directory at `path`, checked before anything reads it: ConfigError naming `what` (the flag or
    command that gave the path, e.g. "--resume"), the path, what is missing and what to do, when there is no such
    folder, no config.yaml in it, or (`needs_checkpoint`) no checkpoint yet."""
    run, where = RunDir(path), _where(path, what)
    if not run.root.is_dir():
        raise ConfigError(
            f"{where}: no such run directory (give the --out of a training run; one stopped before it began "
            "leaves none: start it again with its train command)"
        )
    if not run.config.is_file():
        raise ConfigError(
            f"{where}: no config.yaml there; is it a run directory? (A run killed within milliseconds of making "
            "it has none yet: start it again with its train command.)"
        )
    if needs_checkpoint and not run.has_checkpoint():
        raise ConfigError(
            f"{where}: the run has no checkpoint yet ({run.checkpoint} is missing: it stopped before its first; "
            f"train it with deepcluster train --resume {path})"
        )
    return run


def open_run_or_checkpoint(path: str | os.PathLike[str], what: str = "") -> RunDir | None:
    """The run directory at `path` checked as `open_run_dir` does (with a checkpoint), or None when `path` is a
    checkpoint file; ConfigError naming `what` and the path when it is neither."""
    if Path(path).is_dir():
        return open_run_dir(path, what, needs_checkpoint=True)
    if not Path(path).is_file():
        raise ConfigError(f"{_where(path, what)}: no such run directory or checkpoint file")
    return None


def _where(path: str | os.PathLike[str], what: str) -> str:
    return f"{what} {path}" if what else str(path)


@dataclass
class LabelsTable:
    """The rows of a labels.csv: source indices, image names, and one label column per head."""

    indices: np.ndarray
    names: list[str]
    labels: np.ndarray
    """int64 [N, H]."""
    true_labels: np.ndarray | None = None
    """int64 [N] from the `true_label` column, when the run knew them."""


def read_labels_csv(path: str | os.PathLike[str], option: str = "--labels") -> LabelsTable:
    """Read a labels.csv written by a run; errors name `option`, the file and what is wrong."""
    path = Path(path)
    where = f"{option} {path}" if option else str(path)
    if not path.is_file():
        raise ConfigError(f"{where}: file not found; give a run's labels.csv")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or header[:3] != ["index", "image", "cluster"]:
            raise ConfigError(
                f"{where}: not a labels.csv written by deepcluster (expected columns index,image,cluster,...)"
            )
        heads = [i for i, name in enumerate(header) if name == "cluster" or name.startswith("cluster_h")]
        truth = header.index("true_label") if "true_label" in header else None
        indices, names, labels, true = [], [], [], []
        for line_no, row in enumerate(reader, start=2):
            try:
                indices.append(int(row[0]))
                names.append(row[1])
                labels.append([int(row[i]) for i in heads])
                if truth is not None:
                    true.append(int(row[truth]))
            except (ValueError, IndexError):
                raise ConfigError(f"{where}, line {line_no}: expected whole numbers, got {row!r}") from None
    if not labels:
        raise ConfigError(f"{where}: no rows")
    table = np.asarray(labels, dtype=np.int64)
    if table.min() < 0:
        raise ConfigError(f"{where}: negative cluster ids")
    true_labels = np.asarray(true, dtype=np.int64) if truth is not None else None
    return LabelsTable(np.asarray(indices, dtype=np.int64), names, table, true_labels)


def epoch_label_files(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``labels/epoch_NNN.npy`` of a run, in epoch order.

    ``run_dir`` is the run folder (holding ``labels/``) or the ``labels`` folder itself. Raises
    FileNotFoundError naming the folder when it holds no such file.
    """
    root = Path(run_dir)
    folder = root / "labels" if (root / "labels").is_dir() else root
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _EPOCH_FILE.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
    if not found:
        raise FileNotFoundError(
            f"no per-epoch label files (epoch_NNN.npy) in {folder}; "
            "pass the folder of a run that wrote cluster labels each epoch"
        )
    return sorted(found)
