"""Similarity search at scale: build time, latency, recall@10 and memory of the exact, IVF and HNSW indexes.

The database is N synthetic unit vectors of dimension D (128 by default: the v2 projections' size): a mixture of
`--centres` Gaussian centres (uniform on the sphere, equal weights) plus isotropic noise of norm about
`--spread`, normalised; `--centres 0` gives uniform random unit vectors (the pessimistic case for IVF). The
1,000 queries are fresh draws from the same mixture, not rows of the database. Recall@10 is the mean share of
the exact top 10 (`IndexFlatIP`) that an approximate search returns. Memory is the index file's size (about its
size in memory) and the growth of the process's anonymous resident memory while the index is built.

    python benchmarks/search.py --n 100000 1000000
    python benchmarks/search.py --n 100000 --centres 0       # uniform random vectors
    python benchmarks/search.py --n 100000 --duplicates      # also time duplicate_groups on each index
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from deepcluster.cluster.index import (
    EF_SEARCH,
    NPROBE,
    build_index,
    duplicate_groups,
    ivf_lists,
    load_index,
    save_index,
    search,
)
from machine import cpu_line, status_mb


def machine() -> str:
    """CPU model, flags and cores, faiss's build and threads."""
    return (
        f"CPU {cpu_line()}, faiss {faiss.__version__} "
        f"({faiss.get_compile_options().strip()}), {faiss.omp_get_max_threads()} faiss threads"
    )


def mixture(
    n: int, centres: np.ndarray | None, dim: int, spread: float, rng: np.random.Generator
) -> np.ndarray:
    """n unit vectors: a random centre plus noise of norm ~spread, normalised (uniform if centres is None)."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 1 << 16):
        rows = min(1 << 16, n - start)
        block = rng.standard_normal((rows, dim), dtype=np.float32)
        if centres is not None:
            block *= np.float32(spread / np.sqrt(dim))
            block += centres[rng.integers(len(centres), size=rows)]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + rows] = block
    return out


def timed(call: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.isin(f, t).sum() / len(t) for f, t in zip(found, truth, strict=True)]))


def measure(index: faiss.Index, queries: np.ndarray, k: int, singles: int, **params: int) -> dict:
    """Batch and single-query latency (ms per query) and the ids of the batch search."""
    batch_s, (_, ids) = timed(lambda: search(index, queries, k, **params))
    single_s, _ = timed(lambda: [search(index, queries[i : i + 1], k, **params) for i in range(singles)])
    return {"batch_ms": 1000 * batch_s / len(queries), "single_ms": 1000 * single_s / singles, "ids": ids}


def file_figures(index: faiss.Index, folder: str) -> tuple[float, float, float]:
    """Index file size (MB), save and load seconds."""
    path = Path(folder) / "bench.index"
    save_s, _ = timed(lambda: save_index(index, path))
    load_s, loaded = timed(lambda: load_index(path))
    size = path.stat().st_size / 2**20
    del loaded
    path.unlink()
    return size, save_s, load_s


def run(args: argparse.Namespace, n: int, folder: str) -> list[str]:
    rng = np.random.default_rng(args.seed)
    centres = None
    if args.centres:
        centres = rng.standard_normal((args.centres, args.dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    database = mixture(n, centres, args.dim, args.spread, rng)
    queries = mixture(args.queries, centres, args.dim, args.spread, np.random.default_rng(args.seed + 1))
    sweeps = {
        "flat": [{}],
        "ivf": [{"nprobe": p} for p in args.nprobe],
        "hnsw": [{"ef_search": e} for e in args.ef],
    }
    defaults = {"flat": {}, "ivf": {"nprobe": NPROBE}, "hnsw": {"ef_search": EF_SEARCH}}
    rows, truth = [], None
    for kind in args.kinds:
        gc.collect()
        rss = status_mb("RssAnon")
        build_s, index = timed(lambda kind=kind: build_index(database, kind, seed=args.seed))
        grown = status_mb("RssAnon") - rss
        size, save_s, load_s = file_figures(index, folder)
        what = {"flat": "exact", "ivf": f"nlist {ivf_lists(n)}", "hnsw": "M 32, efC 40"}[kind]
        for params in sweeps[kind]:
            got = measure(index, queries, args.k, args.single, **params)
            if kind == "flat":
                truth = got["ids"]
            rec = recall(got["ids"], truth) if truth is not None else float("nan")
            setting = ", ".join(f"{key} {value}" for key, value in params.items()) or "-"
            mark = " (default)" if params == defaults[kind] and kind != "flat" else ""
            rows.append(
                f"| {n:,} | {kind} ({what}) | {setting}{mark} | {build_s:.1f} | {got['batch_ms']:.3f} | "
                f"{got['single_ms']:.3f} | {rec:.4f} | {size:.0f} | {grown:.0f} | {save_s:.1f} / {load_s:.1f} |"
            )
            print(rows[-1], flush=True)
        if args.duplicates and (kind != "flat" or n <= args.duplicates_exact_max):
            dup_s, groups = timed(lambda index=index: duplicate_groups(database, args.threshold, index))
            print(f"duplicates {kind} N={n:,}: {dup_s:.1f} s, {len(groups)} groups", flush=True)
        del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--centres", type=int, default=2000, help="mixture centres; 0: uniform random")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around a centre")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries searched one at a time")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--kinds", nargs="+", default=["flat", "ivf", "hnsw"], choices=["flat", "ivf", "hnsw"]
    )
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--duplicates", action="store_true", help="time duplicate_groups on each index")
    parser.add_argument("--duplicates-exact-max", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if "flat" in args.kinds:
        args.kinds = ["flat"] + [kind for kind in args.kinds if kind != "flat"]  # the truth comes first
    print(machine())
    print("load average (1, 5, 15 min) at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"D {args.dim}, centres {args.centres}, spread {args.spread}, {args.queries} queries, k {args.k}\n")
    print("| N | index | search setting | build s | batch ms/query | single ms/query | recall@10 | file MB | "
          "RSS growth MB | save / load s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="deepcluster-search-") as folder:
        for n in args.n:
            run(args, n, folder)
    print(f"\npeak RSS {status_mb('VmHWM'):.0f} MB")
    print("load average (1, 5, 15 min) at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
