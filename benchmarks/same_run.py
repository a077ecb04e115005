"""Are two run directories the same run? labels.csv byte for byte, metrics.jsonl apart from timings, every
per-epoch label file, and every tensor of the last checkpoint (networks, optimisers, RNG states) bit for bit.

    python benchmarks/same_run.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]
    python benchmarks/same_run.py --train OUT [--src SRC]   # every method's small seeded runs into OUT/<case>
    python benchmarks/same_run.py --compare BEFORE AFTER    # every case of two --train folders

Used to show that a refactor changed no behaviour: train the same seeded configs with the code before (a git
worktree of the old commit: `--src WORKTREE/src`) and after, compare. Exits 1 on the first difference, naming it.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepcluster.storage import RunDir, epoch_label_files, load_checkpoint

EMBEDDED = Path(__file__).resolve().parents[1] / "src/deepcluster/data/embedded/cifar10_test.npz"
SMALL = ["--input-size", "32", "--k", "10", "--batch-size", "64", "--epochs", "2", "--epoch-size", "256",
         "--checkpoint-every", "3", "--seed", "5", "--no-progress", "-q", "--set", "run.report=false",
         "--set", "run.knn_monitor=200"]  # fmt: skip
V2_SMALL = ["--set", "deepcluster_v2.n_sets=2", "--set", "deepcluster_v2.n_small=2"]
SELA_V2_SMALL = ["--set", "sela_v2.n_sets=2", "--set", "sela_v2.n_small=2"]
CASES: dict[str, list[str]] = {
    # case: the train command's arguments after the common SMALL ones (a "torchrun:" prefix: 2 processes)
    "deepcluster-v2": ["--method", "deepcluster-v2", *V2_SMALL],
    "deepcluster-v2-bank": ["--method", "deepcluster-v2", *V2_SMALL, "--set", "deepcluster_v2.labels_from=bank"],
    "deepcluster-v2-bank-final": ["--method", "deepcluster-v2", *V2_SMALL, "--set",
                                  "deepcluster_v2.labels_from=bank", "--set", "deepcluster_v2.final_labels=bank"],
    "deepcluster-v2-twice": ["--method", "deepcluster-v2", *V2_SMALL, "--set", "cluster.recluster_every=1",
                             "--set", "optim.epoch_size=384"],
    "sela-v2": ["--method", "sela-v2", *SELA_V2_SMALL],
    "sela-v2-bank": ["--method", "sela-v2", *SELA_V2_SMALL, "--set", "sela_v2.labels_from=bank"],
    "deepcluster": ["--method", "deepcluster", "--arch", "alexnet_small_gap", "--set", "cluster.pca_dim=32"],
    "deepercluster": ["--method", "deepercluster", "--arch", "alexnet_small_gap", "--super-clusters", "2",
                      "--set", "cluster.pca_dim=32"],
    "sela": ["--method", "sela", "--arch", "alexnet_small_gap"],
    "transfer": ["--labels", "deepcluster/labels.csv", "--arch", "alexnet_small_gap"],
    "torchrun-deepcluster-v2-bank": ["torchrun:", "--method", "deepcluster-v2", *V2_SMALL, "--set",
                                     "deepcluster_v2.labels_from=bank"],
    "torchrun-deepcluster-sharded": ["torchrun:", "--method", "deepcluster", "--arch", "alexnet_small_gap",
                                     "--set", "cluster.pca_dim=32", "--distributed-kmeans"],
}  # fmt: skip


def write_images(path: Path, n: int = 512) -> Path:
    """The first `n` images of the embedded CIFAR-10 split, decoded, as an .npz (images, labels)."""
    stored = np.load(EMBEDDED)
    data, offsets = stored["jpeg_test"], stored["off_test"]
    images = [np.asarray(Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB"))
              for i in range(n)]  # fmt: skip
    np.savez(path, images=np.stack(images), labels=stored["y_test"][:n].astype(np.int64))
    return path


def train_cases(out: Path, src: Path | None) -> None:
    """Every case of CASES into out/<case> with the package at `src` (default: the one importable here), run in
    `out` with relative paths, so that two folders' configs are the same."""
    out.mkdir(parents=True, exist_ok=True)
    write_images(out / "images.npz")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    if src is not None:
        env["PYTHONPATH"] = str(src.resolve())
    for case, arguments in CASES.items():
        launcher = [sys.executable, "-m"]
        if arguments[0] == "torchrun:":
            arguments = arguments[1:]
            launcher += ["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
        common = ["--data", "images.npz", "--out", case, *SMALL, "--threads", "1"]
        done = subprocess.run([*launcher, "deepcluster", "train", *common, *arguments], cwd=out, env=env,
                              capture_output=True, text=True)  # fmt: skip
        print(f"{case}: {'trained' if done.returncode == 0 else 'FAILED ' + done.stderr[-2000:]}", flush=True)


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
    parser.add_argument("runs", nargs="*", help="pairs of run directories")
    parser.add_argument("--train", type=Path, help="train every case into this folder")
    parser.add_argument("--src", type=Path, help="with --train: the package's source folder to train with")
    parser.add_argument("--compare", type=Path, nargs=2, help="compare every case of two --train folders")
    args = parser.parse_args(argv)
    if args.train:
        train_cases(args.train, args.src)
        return 0
    if args.compare:
        args.runs = [str(folder / case) for case in CASES for folder in args.compare]
    if len(args.runs) % 2 or not args.runs:
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
