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
    labels = _checked(labels, n_samples)
    rng = np.random.default_rng(seed)
    order, starts, sizes = _clusters(labels)
    quota = _split_evenly(n_samples, len(sizes), rng)
    return _draw(order, starts, sizes, quota, rng)


def hierarchical_cluster_sample(labels: np.ndarray, k_sub: int, n_samples: int, seed: int) -> np.ndarray:
    """Image indices for one epoch over two-level clusters (super-cluster = global id // k_sub): every non-empty
    super-cluster equally often, then its non-empty sub-clusters equally often, images within uniformly.

    Shares are split like `uniform_cluster_sample`'s (an equal quota, one more for a random subset), first among
    the super-clusters, then inside each of them. When every non-empty super-cluster has as many non-empty
    sub-clusters as the others (e.g. none is empty), this is `uniform_cluster_sample(labels, n_samples, seed)`.
    """
    labels = _checked(labels, n_samples)
    if k_sub < 1:
        raise ValueError(f"k_sub={k_sub}: must be >= 1")
    order, starts, sizes = _clusters(labels)
    supers = labels[order[starts]] // k_sub  # ascending: the clusters of a super-cluster are contiguous
    _, per_super = np.unique(supers, return_counts=True)
    if np.all(per_super == per_super[0]):
        return uniform_cluster_sample(labels, n_samples, seed)
    rng = np.random.default_rng(seed)
    super_quota = _split_evenly(n_samples, len(per_super), rng)
    quota = np.concatenate(
        [_split_evenly(int(q), int(c), rng) for q, c in zip(super_quota, per_super, strict=True)]
    )
    return _draw(order, starts, sizes, quota, rng)


def _checked(labels: np.ndarray, n_samples: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError("labels must be a non-empty 1-D array")
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples}: must be >= 1")
    return labels


def _clusters(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image indices sorted by cluster, start of each non-empty cluster in them, its size); clusters ascending."""
    order = np.argsort(labels, kind="stable")
    _, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    return order, starts, sizes


def _split_evenly(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`parts` counts summing to `total`: total // parts each, one more for a random subset of total % parts."""
    quota = np.full(parts, total // parts, dtype=np.int64)
    quota[rng.permutation(parts)[: total % parts]] += 1
    return quota


def _draw(
    order: np.ndarray, starts: np.ndarray, sizes: np.ndarray, quota: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """`quota[c]` images of each cluster c, without replacement (fresh permutations when it is too small), shuffled."""
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
