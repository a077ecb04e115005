"""Stability of the cluster assignments across epochs: NMI between consecutive epochs' labels (Caron 2018)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepcluster.cluster.metrics import nmi
from deepcluster.storage.run_dir import epoch_label_files

__all__ = ["epoch_label_files", "epoch_stability"]


def epoch_stability(run_dir: str | Path) -> list[tuple[int, float]]:
    """NMI between the labels of each epoch and those of the epoch before it: ``[(epoch, nmi), ...]``.

    One entry per label file after the first (epoch >= 1 for a complete run); when epochs are missing, each
    file is compared with the previous file present. Raises FileNotFoundError when the run has no label
    files and ValueError when two files hold different numbers of labels.
    """
    files = epoch_label_files(run_dir)
    result: list[tuple[int, float]] = []
    previous: np.ndarray | None = None
    previous_path: Path | None = None
    for epoch, path in files:
        loaded = np.load(path)
        labels = loaded[:, 0] if loaded.ndim == 2 else loaded.ravel()
        if previous is not None:
            if len(labels) != len(previous):
                raise ValueError(
                    f"{path.name} holds {len(labels)} labels but {previous_path.name} holds {len(previous)}; "
                    "epoch stability needs the same images every epoch"
                )
            result.append((epoch, nmi(previous, labels)))
        previous, previous_path = labels, path
    return result
