"""Sinkhorn-Knopp at scale: seconds per iteration and anonymous (heap) memory for a memory-mapped P.

Writes N x K random float32 log-probabilities to a memory-mapped .npy file, then runs a fixed number of Sinkhorn
iterations on it in chunks of `--chunk-mb` and reports seconds per iteration and the peak anonymous resident
memory (RssAnon, sampled every 20 ms: the file's own pages are the page cache's, not the process's heap).

    python benchmarks/sinkhorn.py --n 200000 --k 3000 --iters 20
    python benchmarks/sinkhorn.py --balance      # cluster sizes of the argmax against the sharpness of P

With --balance: for low-rank random logits (N = 10,000, K = 100) at several scales, the smallest and largest
cluster of the labels, for lambda 10 and 25: the argmax of the balanced plan is balanced only once P is sharp.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from deepcluster.cluster.sinkhorn import default_chunk_rows, sinkhorn_labels
from machine import cpu_line


def anon_rss_mb() -> float:
    """Anonymous resident memory of this process (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def balance_table() -> None:
    """Smallest and largest cluster of Sinkhorn's labels as P sharpens (N = 10,000, K = 100, 100 per cluster)."""
    rng = np.random.default_rng(0)
    n, k = 10_000, 100
    print("logit_scale  lambda  iterations  smallest  largest")
    for scale in (0.05, 0.2, 1.0, 3.0):
        logits = rng.normal(size=(n, 8)) @ rng.normal(size=(8, k)) * scale
        log_probs = torch.log_softmax(torch.as_tensor(logits), dim=1).numpy()
        for lam in (10.0, 25.0):
            result = sinkhorn_labels(log_probs, lam)
            sizes = np.bincount(result.labels, minlength=k)
            print(f"{scale:11.2f}  {lam:6.0f}  {result.iterations:10d}  {sizes.min():8d}  {sizes.max():7d}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=3000)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--chunk-mb", type=float, default=64.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--balance", action="store_true", help="only the balance table")
    args = parser.parse_args()
    if args.balance:
        balance_table()
        return

    folder = Path(tempfile.mkdtemp(prefix="deepcluster-sinkhorn-"))
    path = folder / "log_probs.npy"
    log_probs = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.n, args.k))
    rng = np.random.default_rng(0)
    for start in range(0, args.n, 10_000):
        logits = torch.as_tensor(rng.normal(size=(min(10_000, args.n - start), args.k)).astype(np.float32))
        log_probs[start : start + len(logits)] = torch.log_softmax(logits * 3, dim=1).numpy()
    log_probs.flush()
    del log_probs
    log_probs = np.load(path, mmap_mode="r")

    baseline = anon_rss_mb()
    peak = [baseline]
    running = True

    def sample() -> None:
        while running:
            peak[0] = max(peak[0], anon_rss_mb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = sinkhorn_labels(
        log_probs, 25.0, tolerance=1e-12, max_iters=args.iters, device=args.device,
        chunk_rows=default_chunk_rows(args.k, args.chunk_mb),
    )  # fmt: skip
    seconds = time.perf_counter() - started  # the iterations plus one labelling pass
    running = False
    sampler.join()
    path.unlink()
    report = {
        "machine": f"{cpu_line()}, {torch.get_num_threads()} threads",
        "n": args.n, "k": args.k, "p_gb": args.n * args.k * 4 / 1e9, "chunk_mb": args.chunk_mb,
        "iterations": result.iterations, "seconds_per_pass": seconds / (result.iterations + 1),
        "anon_rss_baseline_mb": round(baseline), "anon_rss_peak_mb": round(peak[0]),
        "anon_rss_added_mb": round(peak[0] - baseline),
    }  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
