"""Stability of the cluster assignments across epochs: NMI between consecutive epochs' labels (Caron 2018)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from deepcluster.evaluate.metrics import nmi

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.npy$")


def epoch_label_files(run_dir: str | Path) -> list[tuple[int, Path]]:
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
