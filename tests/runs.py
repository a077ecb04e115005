"""Whole runs started as a user starts them (`python -m deepcluster train` in a child process), and the
comparison of two finished runs down to every checkpoint tensor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from deepcluster.storage import epoch_label_files, load_checkpoint

V2 = [
    "deepcluster_v2.n_sets=2",
    "deepcluster_v2.n_small=2",
    "deepcluster_v2.hidden=32",
    "deepcluster_v2.out_dim=16",
]


def command(data: Path, out: Path, *extra: str) -> list[str]:
    """`deepcluster train` of a small DeepCluster-v2 run: 4 epochs of 10 steps, one thread."""
    settings = [f"--set={item}" for item in [*V2, "run.report=false", "run.checkpoint_every=0"]]
    return [
        sys.executable, "-m", "deepcluster", "train", "--data", str(data), "--out", str(out), "--input-size", "16",
        "--k", "8", "--batch-size", "32", "--epochs", "4", "--epoch-size", "320", "--seed", "3", "--threads", "1",
        "--no-progress", "-q", *settings, *extra,
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(arguments, env=environment(), capture_output=True, text=True, timeout=300)


def assert_same_run(a: Path, b: Path) -> None:
    """Two finished runs are the same: labels.csv, every per-epoch label file and every checkpoint tensor and
    number (networks, optimisers, loop state, labels, RNG states, the method's state) with the same keys."""
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    files_a, files_b = epoch_label_files(a), epoch_label_files(b)
    assert [e for e, _ in files_a] == [e for e, _ in files_b]
    for (_, path_a), (_, path_b) in zip(files_a, files_b, strict=True):
        assert np.array_equal(np.load(path_a), np.load(path_b))
    first, second = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (a, b))
    for state in (first, second):
        state["config"]["run"].pop("out")
        state["config"]["run"].pop("auto_resume")
        for record in [*state["loop"]["history"], state["loop"]["record"]]:
            for key in [k for k in record if k.startswith("seconds")]:
                record.pop(key)
    _equal(first, second, "checkpoint")


def _equal(a: object, b: object, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, np.asarray(b)), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            _equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
