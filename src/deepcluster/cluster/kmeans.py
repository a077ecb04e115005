"""k-means with faiss (L2), nearest-centroid assignment, and filling of empty clusters.

NumPy in, NumPy out; no torch. DeepCluster needs every cluster to be non-empty (each one is a class of the
classification head), so `kmeans` repairs empty clusters after the final assignment by splitting large ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from deepcluster.cluster.preprocess import as_float32_matrix

# Rows searched per faiss call in `assign`, so the distance buffers stay bounded for large N.
_ASSIGN_BATCH_ROWS = 1 << 16
# Lloyd iterations of the 2-means that splits a cluster in `fill_empty_clusters`.
_SPLIT_ITERS = 10


@dataclass(frozen=True)
class KMeansResult:
    """Output of `kmeans`."""

    labels: np.ndarray  # int64 [N]; every id in 0..k-1 has at least one point
    centroids: np.ndarray  # float32 [k, d]
    loss: float  # k-means objective of the final faiss iteration (sum of squared distances)
    n_empty: int  # clusters that were empty after the final assignment, before filling
    losses: list[float] = field(default_factory=list)  # objective per faiss iteration


def _check_k(k: int, n: int) -> None:
    if k < 1:
        raise ValueError(f"k={k} is not a valid number of clusters; use --k 1 or more.")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of images ({n}); use --k {n} or less.")


def checked_kmeans_input(x: np.ndarray, k: int, n_iter: int) -> tuple[np.ndarray, int, int]:
    """(float32 C-contiguous features, k, n_iter) after the checks every k-means here shares."""
    arr = as_float32_matrix(x)
    k, n_iter = int(k), int(n_iter)
    _check_k(k, arr.shape[0])
    if n_iter < 1:
        raise ValueError(f"kmeans_iters={n_iter} is invalid; use 1 or more k-means iterations.")
    return arr, k, n_iter


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (L2) of every row of `x`: (labels int64 [N], squared distances float32 [N]).

    Ties go to the smallest centroid id. The search runs in batches so memory stays bounded.
    """
    arr = as_float32_matrix(x)
    cents = as_float32_matrix(centroids, name="centroids")
    if cents.shape[1] != arr.shape[1]:
        raise ValueError(
            f"centroids have dimension {cents.shape[1]} but features have dimension {arr.shape[1]}; "
            "they must match."
        )
    index = faiss.IndexFlatL2(cents.shape[1])
    index.add(cents)
    labels = np.empty(arr.shape[0], dtype=np.int64)
    dists = np.empty(arr.shape[0], dtype=np.float32)
    for start in range(0, arr.shape[0], _ASSIGN_BATCH_ROWS):
        stop = start + _ASSIGN_BATCH_ROWS
        d, i = index.search(arr[start:stop], 1)
        labels[start:stop] = i[:, 0]
        dists[start:stop] = d[:, 0]
    np.maximum(dists, 0.0, out=dists)  # ||x||^2 + ||c||^2 - 2<x, c> can round slightly below zero
    return labels, dists


def _split_in_two(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the points that leave the cluster; both sides are non-empty (needs >= 2 points).

    A small 2-means: one seed drawn with `rng`, the other the point farthest from it, then Lloyd steps.
    When that degenerates (e.g. all points identical) the second half of the points (by order) leaves.
    """
    pts = points.astype(np.float64)
    first = pts[rng.integers(len(pts))]
    d_first = ((pts - first) ** 2).sum(axis=1)
    centers = np.stack([first, pts[int(np.argmax(d_first))]])
    mask = np.zeros(len(pts), dtype=bool)
    if d_first.max() > 0.0:
        for _ in range(_SPLIT_ITERS):
            # ||p - c||^2 up to the per-point constant ||p||^2, which does not change the comparison.
            d = (centers**2).sum(axis=1)[None, :] - 2.0 * (pts @ centers.T)
            new_mask = d[:, 1] < d[:, 0]
            if not new_mask.any() or new_mask.all():
                break
            mask = new_mask
            centers = np.stack([pts[~mask].mean(axis=0), pts[mask].mean(axis=0)])
    if not mask.any() or mask.all():
        mask = np.zeros(len(pts), dtype=bool)
        mask[len(pts) // 2 :] = True
    return mask


def fill_empty_clusters(
    x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Make every cluster non-empty by splitting the currently largest cluster for each empty one.

    For each empty id j (ascending), the largest cluster c (ties: smallest id) is split in two by a small
    2-means seeded by `seed`; one half stays c, the other becomes j, and both centroids become their members'
    means.
    Returns (labels int64 [N], centroids float32 [k, d], number of clusters that were empty).
    """
    arr = as_float32_matrix(x)
    cents = np.array(as_float32_matrix(centroids, name="centroids"), copy=True)
    lab = np.array(labels, dtype=np.int64, copy=True)
    n, k = arr.shape[0], cents.shape[0]
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the features; got {lab.shape}.")
    if cents.shape[1] != arr.shape[1]:
        raise ValueError(
            f"centroids have dimension {cents.shape[1]} but features have dimension {arr.shape[1]}; "
            "they must match."
        )
    if n and (lab.min() < 0 or lab.max() >= k):
        raise ValueError(f"labels must lie in 0..{k - 1} (one per centroid); got {lab.min()}..{lab.max()}.")
    counts = np.bincount(lab, minlength=k)
    empty = np.flatnonzero(counts == 0)
    rng = np.random.default_rng(seed)
    for j in empty:
        c = int(np.argmax(counts))
        if counts[c] <= 1:
            raise ValueError(
                f"cannot fill empty clusters: every cluster has at most one point; k={k} must be <= "
                f"the number of images ({n})."
            )
        members = np.flatnonzero(lab == c)
        leave = _split_in_two(arr[members], rng)
        moved, kept = members[leave], members[~leave]
        lab[moved] = j
        counts[j], counts[c] = len(moved), len(kept)
        cents[j] = arr[moved].astype(np.float64).mean(axis=0)
        cents[c] = arr[kept].astype(np.float64).mean(axis=0)
    return lab, cents, len(empty)


def kmeans(
    x: np.ndarray,
    k: int,
    n_iter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int | None = None,
    n_threads: int | None = None,
    verbose: bool = False,
) -> KMeansResult:
    """L2 k-means of the rows of `x` with faiss, final nearest-centroid labels, and empty clusters filled.

    max_points_per_centroid=None trains on all rows (faiss never subsamples; the DeepCluster setting).
    n_threads, if given, sets faiss's OpenMP threads for this call only. `losses` may be shorter than n_iter
    when faiss stops early because the objective no longer changes.
    """
    arr, k, n_iter = checked_kmeans_input(x, k, n_iter)
    n, d = arr.shape
    if max_points_per_centroid is not None and max_points_per_centroid < 1:
        raise ValueError(
            f"max_points_per_centroid={max_points_per_centroid} is invalid; "
            "use None (no subsampling) or a value >= 1."
        )
    if n_threads is not None and n_threads < 1:
        raise ValueError(f"n_threads={n_threads} is invalid; use None (faiss default) or >= 1.")

    params = faiss.ClusteringParameters()
    params.niter = n_iter
    params.seed = int(seed) % (2**31 - 1)  # faiss takes a 32-bit seed
    params.verbose = bool(verbose)
    params.min_points_per_centroid = 1
    # faiss subsamples when n > k * max_points_per_centroid; n // k + 1 makes that impossible.
    if max_points_per_centroid is None:
        params.max_points_per_centroid = n // k + 1
    else:
        params.max_points_per_centroid = int(max_points_per_centroid)
    clustering = faiss.Clustering(d, k, params)

    previous_threads = faiss.omp_get_max_threads()
    if n_threads is not None:
        faiss.omp_set_num_threads(int(n_threads))
    try:
        clustering.train(arr, faiss.IndexFlatL2(d))
        centroids = faiss.vector_to_array(clustering.centroids).reshape(k, d)
        labels, _ = assign(arr, centroids)
    finally:
        faiss.omp_set_num_threads(previous_threads)

    stats = clustering.iteration_stats
    losses = [float(stats.at(i).obj) for i in range(stats.size())]
    labels, centroids, n_empty = fill_empty_clusters(arr, labels, centroids, seed=seed)
    loss = losses[-1] if losses else float("nan")
    return KMeansResult(labels=labels, centroids=centroids, loss=loss, n_empty=n_empty, losses=losses)


def kmeans_on_sample(
    x: np.ndarray,
    k: int,
    sample_size: int | None,
    seed: int,
    fit: Callable[[np.ndarray], KMeansResult],
) -> KMeansResult:
    """k-means trained on `sample_size` random rows of `x`, then every row labelled by its nearest centroid.

    `fit` trains k-means on the rows it is given (e.g. ``lambda rows: kmeans(rows, k, seed=seed)``). With
    `sample_size` None or >= N it is simply ``fit(x)``. Otherwise the rows are drawn without replacement with
    ``np.random.default_rng(seed)`` (kept in their original order), every row of `x` is assigned in batches, and
    clusters left empty are filled (`fill_empty_clusters`). `loss` and `losses` are the trained fit's (on the
    sample); `n_empty` counts the clusters empty after assigning every row.
    """
    n = len(x)
    if sample_size is None or sample_size >= n:
        return fit(x)
    if sample_size < k:
        raise ValueError(
            f"kmeans_sample={sample_size} is smaller than k={k}: train k-means on at least k points."
        )
    arr = as_float32_matrix(x)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=int(sample_size), replace=False))
    trained = fit(arr[rows])
    labels, _ = assign(arr, trained.centroids)
    labels, centroids, n_empty = fill_empty_clusters(arr, labels, trained.centroids, seed=seed)
    return KMeansResult(
        labels=labels, centroids=centroids, loss=trained.loss, n_empty=n_empty, losses=list(trained.losses)
    )
