"""Are two run directories the same run? labels.csv byte for byte, metrics.jsonl apart from timings, every
per-epoch label file, and every tensor of the last checkpoint (networks, optimisers, RNG states) bit for bit.

    python benchmarks/same_run.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]

Used to show that a refactor changed no behaviour: train the same seeded config before and after, compare.
Exits 1 on the first difference, naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcluster.storage import RunDir, epoch_label_files, load_checkpoint

TIMINGS = ("seconds",)  # keys starting with these are wall-clock measurements, not results


def _without_timings(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith(TIMINGS)}


def _equal(a: Any, b: Any, where: str) -> list[str]:
    """Where `a` and `b` differ (tensors and arrays bit for bit, containers recursively)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
        return [] if same and torch.equal(a, b) else [where]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return [] if np.array_equal(np.asarray(a), np.asarray(b)) else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} (keys {sorted(set(a) ^ set(b), key=str)})"]
        return [d for key in a for d in _equal(a[key], b[key], f"{where}.{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} (length {len(a)} vs {len(b)})"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _equal(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def compare(first: Path, second: Path) -> list[str]:
    """The differences between two runs (empty: the same run)."""
    a, b = RunDir(first), RunDir(second)
    differences = []
    if a.labels_csv.read_bytes() != b.labels_csv.read_bytes():
        differences.append("labels.csv")
    history_a = [_without_timings(r) for r in a.read_history()]
    history_b = [_without_timings(r) for r in b.read_history()]
    differences += _equal(history_a, history_b, "metrics.jsonl")
    files_a, files_b = epoch_label_files(a.root), epoch_label_files(b.root)
    differences += _equal([e for e, _ in files_a], [e for e, _ in files_b], "labels/ epochs")
    for (epoch, path_a), (_, path_b) in zip(files_a, files_b, strict=False):
        differences += _equal(np.load(path_a), np.load(path_b), f"labels/epoch_{epoch:03d}.npy")
    ckpt_a, ckpt_b = load_checkpoint(a.checkpoint), load_checkpoint(b.checkpoint)
    loop_a, loop_b = dict(ckpt_a.pop("loop")), dict(ckpt_b.pop("loop"))
    for loop in (loop_a, loop_b):
        loop["history"] = [_without_timings(r) for r in loop["history"]]
        loop["record"] = _without_timings(loop["record"])
    differences += _equal(loop_a, loop_b, "checkpoint.loop")
    config_a, config_b = ckpt_a.pop("config"), ckpt_b.pop("config")
    config_a["run"].pop("out"), config_b["run"].pop("out")  # the run directories differ by construction
    differences += _equal(config_a, config_b, "checkpoint.config")
    differences += _equal(ckpt_a, ckpt_b, "checkpoint")
    return differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="pairs of run directories")
    args = parser.parse_args(argv)
    if len(args.runs) % 2:
        parser.error("give run directories in pairs")
    failed = False
    for first, second in zip(args.runs[::2], args.runs[1::2], strict=True):
        differences = compare(Path(first), Path(second))
        status = "same" if not differences else "DIFFERENT: " + ", ".join(differences[:10])
        print(f"{first} vs {second}: {status}")
        failed |= bool(differences)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
