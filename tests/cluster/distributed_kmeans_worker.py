"""Worker of tests/cluster/test_distributed_kmeans.py, run under torchrun (gloo, CPU): python -m torch.distributed.run
--standalone --nproc_per_node=2 tests/cluster/distributed_kmeans_worker.py OUT_DIR.

Every rank fits the distributed k-means, fill and PCA on its shard of fixed matrices (built by the functions
below, which the test also uses for its single-process references) and writes what it got to
OUT_DIR/rank<r>.npz.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from deepcluster.cluster.distributed import (
    distributed_fill_empty_clusters,
    distributed_kmeans,
    distributed_pca_fit,
)
from deepcluster.engine.distributed import shard_range

Split = Callable[[int, int, int], tuple[int, int]]  # (n, rank, world) -> rows [start, stop) of the rank

KMEANS_CASES = {  # name -> (k, n_iter, seed)
    "blobs": (7, 10, 3),
    "duplicates": (12, 6, 1),
}
PCA_CASES = {  # name -> (dim, sample_size, seed)
    "pca_all": (8, None, 0),
    "pca_sample": (6, 201, 5),
    "pca_gram": (4, 11, 2),  # fewer training rows than D: the sampled rows are gathered to rank 0
}
FILL_K, FILL_SEED = 10, 4


def blobs(n: int = 301, d: int = 16, k: int = 6, seed: int = 0) -> np.ndarray:
    """n points around k centres (odd n, so that two shards differ in size)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * 4.0
    return (centers[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)


def duplicates(distinct: int = 8, d: int = 5, seed: int = 0) -> np.ndarray:
    """Copies of `distinct` points, interleaved so every point has copies on every shard; with k > distinct
    the Lloyd iterations leave clusters empty and the final fill must split clusters of identical rows."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((distinct, d)).astype(np.float32)
    copies = rng.integers(5, 40, distinct)
    order = rng.permutation(int(copies.sum()))
    return np.repeat(points, copies, axis=0)[order]


def correlated(n: int = 301, d: int = 16, seed: int = 1) -> np.ndarray:
    """Gaussian rows with a random covariance of well separated eigenvalues and a non-zero mean."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    std = np.geomspace(8.0, 0.5, d)
    return ((rng.standard_normal((n, d)) * std) @ basis.T + 3.0).astype(np.float32)


def fill_inputs(n: int = 101, d: int = 6, seed: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels using only 3 of FILL_K ids (7 empty clusters to fill), and centroids."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    labels = rng.choice([1, 4, 5], size=n, p=[0.5, 0.3, 0.2]).astype(np.int64)
    return x, labels, rng.standard_normal((FILL_K, d)).astype(np.float32)


def compute(split: Split = shard_range, prefix: str = "") -> dict[str, np.ndarray]:
    """Run every distributed function on this rank's shard (`split` cuts the rows) and return the results.

    Without a process group this is one process holding all rows (the functions fall back to the
    single-process ones)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    out: dict[str, np.ndarray] = {}
    for name, (k, n_iter, seed) in KMEANS_CASES.items():
        x = blobs() if name == "blobs" else duplicates()
        start, stop = split(len(x), rank, world)
        result = distributed_kmeans(x[start:stop], k, n_iter=n_iter, seed=seed, batch_rows=64)
        out[f"{prefix}{name}_labels"] = result.labels
        out[f"{prefix}{name}_centroids"] = result.centroids
        out[f"{prefix}{name}_losses"] = np.array(result.losses)
        out[f"{prefix}{name}_n_empty"] = np.array(result.n_empty)
    x, labels, centroids = fill_inputs()
    start, stop = split(len(x), rank, world)
    lab, cents, n_empty = distributed_fill_empty_clusters(
        x[start:stop], labels[start:stop], centroids, seed=FILL_SEED
    )
    out[f"{prefix}fill_labels_{rank}"] = lab
    out[f"{prefix}fill_centroids"] = cents
    out[f"{prefix}fill_n_empty"] = np.array(n_empty)
    x = correlated()
    start, stop = split(len(x), rank, world)
    for name, (dim, sample_size, seed) in PCA_CASES.items():
        pca = distributed_pca_fit(x[start:stop], dim, sample_size=sample_size, seed=seed)
        for key, value in pca.state_dict().items():
            out[f"{prefix}{name}_{key}"] = np.asarray(value)
    return out


def error_messages() -> dict[str, np.ndarray]:
    """Messages every rank gets from calls that are invalid on one rank only (none may hang)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    x = blobs()
    start, stop = shard_range(len(x), rank, world)
    shard = x[start:stop].copy()
    messages = {}
    try:
        distributed_kmeans(shard, 5 + rank, n_iter=2)
    except ValueError as exc:
        messages["error_k"] = str(exc)
    if rank == world - 1:
        shard[3, 2] = np.nan
    try:
        distributed_pca_fit(shard, 4)
    except ValueError as exc:
        messages["error_nan"] = str(exc)
    return {key: np.array(value) for key, value in messages.items()}


def all_on_last_rank(n: int, rank: int, world: int) -> tuple[int, int]:
    """A split where every rank but the last has no rows."""
    return (0, n) if rank == world - 1 else (0, 0)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        results = compute()
        results.update(compute(all_on_last_rank, prefix="uneven_"))
        results.update(error_messages())
        np.savez(Path(out_dir) / f"rank{dist.get_rank()}.npz", **results)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
