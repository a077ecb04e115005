"""The layout of a run directory and the writes into it (all atomic)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepcluster.config import ConfigError
from deepcluster.engine.checkpoint import atomic_save_numpy, atomic_write_text


class RunDir:
    """Paths of one run: config.yaml, checkpoints/, labels/, metrics.jsonl, labels.csv, events for TensorBoard."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

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

    def epoch_labels(self, epoch: int) -> Path:
        return self.root / "labels" / f"epoch_{epoch:03d}.npy"

    def prepare(self, resume: bool) -> None:
        """Create the folder and check it is writable; refuse to start a new run over an existing one."""
        if not resume and self.checkpoint.exists():
            raise ConfigError(
                f"--out {self.root}: a run already exists there; resume it with --resume {self.root} "
                "or choose another --out"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            raise ConfigError(
                f"--out {self.root}: cannot write there ({error.strerror or error}); choose a writable folder"
            ) from error

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


@dataclass
class LabelsTable:
    """The rows of a labels.csv: source indices, image names, and one label column per head."""

    indices: np.ndarray
    names: list[str]
    labels: np.ndarray
    """int64 [N, H]."""


def read_labels_csv(path: str | os.PathLike[str]) -> LabelsTable:
    """Read a labels.csv written by a run; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--labels {path}: file not found; give a run's labels.csv")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or header[:3] != ["index", "image", "cluster"]:
            raise ConfigError(
                f"--labels {path}: not a labels.csv written by deepcluster (expected columns index,image,cluster,...)"
            )
        heads = [i for i, name in enumerate(header) if name == "cluster" or name.startswith("cluster_h")]
        indices, names, labels = [], [], []
        for line_no, row in enumerate(reader, start=2):
            try:
                indices.append(int(row[0]))
                names.append(row[1])
                labels.append([int(row[i]) for i in heads])
            except (ValueError, IndexError):
                raise ConfigError(
                    f"--labels {path}, line {line_no}: expected whole numbers, got {row!r}"
                ) from None
    if not labels:
        raise ConfigError(f"--labels {path}: no rows")
    table = np.asarray(labels, dtype=np.int64)
    if table.min() < 0:
        raise ConfigError(f"--labels {path}: negative cluster ids")
    return LabelsTable(np.asarray(indices, dtype=np.int64), names, table)
