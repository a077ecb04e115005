"""Memory and time of the labelling step on a large collection: features memory-mapped on disk, PCA fitted on a
sample, k-means trained on a sample and every point then assigned in batches.

Each configuration runs in a fresh process (so its peak RSS is its own) on an N x D float32 feature file made
once on disk, and reports the peak anonymous resident memory (heap: not the pages of the mapped feature file,
which the kernel can drop) above the process's start, the seconds, and how far the
labels of the sampled run are from those of the full run (NMI), when both ran.

    python benchmarks/large_collection.py --n 200000 --dim 4096 --k 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from machine import status_mb


def _make_features(path: Path, n: int, dim: int, clusters: int, seed: int = 0) -> None:
    """N x D float32 features of `clusters` Gaussian blobs in a random 64-dimensional subspace, written in chunks
    (the file never has to fit in memory)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((64, dim)).astype(np.float32)
    centres = rng.standard_normal((clusters, 64)).astype(np.float32) * 3
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, 16384):
        rows = min(16384, n - start)
        which = rng.integers(0, clusters, rows)
        latent = centres[which] + rng.standard_normal((rows, 64)).astype(np.float32)
        out[start : start + rows] = latent @ basis + 0.1 * rng.standard_normal((rows, dim)).astype(np.float32)
    out.flush()
    del out


class _PeakWatcher(threading.Thread):
    """Samples `status_mb("RssAnon")` every 20 ms; `peak` is the largest value seen."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = status_mb("RssAnon")
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, status_mb("RssAnon"))
            time.sleep(0.02)


def _child(args: argparse.Namespace) -> None:
    """Run one labelling in this process and print a JSON line."""
    from deepcluster import preset_config
    from deepcluster.config import apply_overrides
    from deepcluster.methods import build_method

    features = np.load(args.features, mmap_mode="r")
    config = apply_overrides(
        preset_config("default"),
        {
            "method": args.method,
            "cluster": {
                "k": args.k,
                "pca_dim": 256,
                "pca_sample": args.pca_sample,
                "kmeans_sample": args.kmeans_sample,
                "kmeans_iters": args.iters,
            },
            "run": {"device": "cpu"},
        },
    )
    method = build_method(config)
    base = status_mb("RssAnon")
    watcher = _PeakWatcher()
    watcher.start()
    started = time.perf_counter()
    labels = method.assign(features, seed=0).labels
    seconds = time.perf_counter() - started
    watcher.running = False
    watcher.join()
    np.save(args.labels_out, labels)
    print(json.dumps({"seconds": seconds, "peak_mb": max(watcher.peak, status_mb("RssAnon")) - base}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument(
        "--sample", type=int, default=50_000, help="PCA and k-means sample of the sampled runs"
    )
    parser.add_argument("--method", default="deepcluster")
    parser.add_argument("--skip-full", action="store_true", help="only the sampled configuration")
    parser.add_argument("--folder", help="where the feature file goes (default: a temporary folder)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    parser.add_argument("--pca-sample", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kmeans-sample", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--labels-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    from sklearn.metrics import normalized_mutual_info_score

    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        features = Path(folder) / "features.npy"
        started = time.perf_counter()
        _make_features(features, args.n, args.dim, clusters=args.k)
        size_gb = args.n * args.dim * 4 / 1e9
        print(f"features: {args.n:,} x {args.dim} float32 = {size_gb:.2f} GB on disk "
              f"({time.perf_counter() - started:.0f} s to write)")  # fmt: skip
        runs = [("sampled", args.sample, args.sample)] + ([] if args.skip_full else [("full", None, None)])
        labels = {}
        print("| run | PCA rows | k-means rows | seconds | peak heap added (MB) |")
        print("| --- | --- | --- | --- | --- |")
        for name, pca_sample, kmeans_sample in runs:
            out = Path(folder) / f"labels-{name}.npy"
            command = [
                sys.executable, __file__, "--child", "--features", str(features), "--k", str(args.k),
                "--iters", str(args.iters), "--method", args.method, "--labels-out", str(out),
            ]  # fmt: skip
            if pca_sample:
                command += ["--pca-sample", str(pca_sample), "--kmeans-sample", str(kmeans_sample)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            labels[name] = np.load(out)
            rows = f"{pca_sample:,}" if pca_sample else f"{args.n:,}"
            print(f"| {name} | {rows} | {rows} | {result['seconds']:.1f} | {result['peak_mb']:.0f} |")
        if len(labels) == 2:
            agreement = normalized_mutual_info_score(labels["full"], labels["sampled"])
            print(f"NMI between the sampled and the full run's labels: {agreement:.4f}")


if __name__ == "__main__":
    main()
