"""Whole runs started as a user starts them: `python -m deepcluster train` in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

V2 = [
    "deepcluster_v2.n_sets=2",
    "deepcluster_v2.n_small=2",
    "deepcluster_v2.hidden=32",
    "deepcluster_v2.out_dim=16",
]


def command(data: Path, out: Path, *extra: str) -> list[str]:
    """`deepcluster train --auto-resume` of a small DeepCluster-v2 run: 2 epochs of 10 steps, one thread."""
    settings = [f"--set={item}" for item in [*V2, "run.report=false", "run.checkpoint_every=0"]]
    return [
        sys.executable, "-m", "deepcluster", "train", "--data", str(data), "--out", str(out), "--input-size", "16",
        "--k", "8", "--batch-size", "32", "--epochs", "2", "--epoch-size", "320", "--seed", "3", "--threads", "1",
        "--no-progress", "-q", "--auto-resume", *settings, *extra,
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(arguments, env=environment(), capture_output=True, text=True, timeout=300)
