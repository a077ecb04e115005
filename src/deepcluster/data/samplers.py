"""Samplers of one epoch's training images: uniform over pseudo-label clusters, or over images."""

from __future__ import annotations

import numpy as np


def uniform_cluster_sample(labels: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """Image indices for one epoch: every non-empty cluster equally often, images within a cluster uniformly.

    Each non-empty cluster gets `n_samples // C` draws (C = number of non-empty clusters) and a random subset of
    clusters one more, so the counts sum to `n_samples`. Within a cluster, images are drawn without replacement,
    cycling through fresh random permutations when the cluster is smaller than its quota. The result is shuffled.
    The same labels, size and seed give the same indices.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError("labels must be a non-empty 1-D array")
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples}: must be >= 1")
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    clusters, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    n_clusters = clusters.size
    quota = np.full(n_clusters, n_samples // n_clusters, dtype=np.int64)
    quota[rng.permutation(n_clusters)[: n_samples % n_clusters]] += 1

    picked = []
    for start, size, count in zip(starts, sizes, quota, strict=True):
        if count == 0:
            continue
        members = order[start : start + size]
        rounds = -(-int(count) // int(size))
        draws = np.concatenate([members[rng.permutation(size)] for _ in range(rounds)])
        picked.append(draws[:count])
    indices = np.concatenate(picked)
    rng.shuffle(indices)
    return indices.astype(np.int64)


def shuffled_sample(n_images: int, n_samples: int, seed: int) -> np.ndarray:
    """Image indices for one epoch drawn uniformly over images: fresh random permutations, concatenated."""
    if n_images < 1 or n_samples < 1:
        raise ValueError(
            f"shuffled_sample: need n_images >= 1 and n_samples >= 1, got {n_images}, {n_samples}"
        )
    rng = np.random.default_rng(seed)
    rounds = -(-n_samples // n_images)
    return np.concatenate([rng.permutation(n_images) for _ in range(rounds)])[:n_samples].astype(np.int64)
