"""Two-level k-means (DeeperCluster): m super-clusters, then k / m sub-clusters inside each of them.

Global cluster ids are ``super * k_sub + sub``, so every sub-cluster lies inside one super-cluster and the
super-cluster of a global id is ``id // k_sub``. NumPy in, NumPy out; the k-means itself is the caller's `fit`.
Not exported by `deepcluster.cluster` (its seeds come from `engine.seeding`, which imports torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from deepcluster.cluster.kmeans import KMeansResult
from deepcluster.cluster.preprocess import as_float32_matrix
from deepcluster.seeding import derive_seed

KMeansFit = Callable[[np.ndarray, int, int], KMeansResult]
"""(points, k, seed) -> KMeansResult: a k-means whose labels are all in 0..k-1."""


def sub_seed(seed: int, super_cluster: int, n_super: int) -> int:
    """Seed of the k-means inside one super-cluster: `seed` itself when there is a single super-cluster (so
    m = 1 is exactly the flat k-means), else one derived from (seed, "sub", super_cluster)."""
    return int(seed) if n_super == 1 else derive_seed(seed, "sub", super_cluster)


@dataclass(frozen=True)
class HierarchicalResult:
    """Output of `hierarchical_kmeans`."""

    labels: np.ndarray  # int64 [N] global ids super * k_sub + sub, in 0..n_super * k_sub - 1
    super_labels: np.ndarray  # int64 [N] in 0..n_super-1
    sub_labels: np.ndarray  # int64 [N] local ids in 0..k_sub-1
    k_sub: int
    super_loss: float  # k-means objective of the super-level k-means
    sub_losses: list[float]  # objective of the k-means inside each super-cluster (nan where it had no point)
    centroids: np.ndarray  # float32 [n_super * k_sub, d] by global id; rows of empty sub-clusters are nan
    super_centroids: np.ndarray  # float32 [n_super, d]
    short: dict[int, int] = field(default_factory=dict)
    """Super-clusters with fewer points than k_sub: id -> points (= sub-clusters it got)."""

    @property
    def n_super(self) -> int:
        """Number of super-clusters (m)."""
        return len(self.super_centroids)

    @property
    def sizes(self) -> np.ndarray:
        """Points per global cluster id, int64 [n_super * k_sub]."""
        return np.bincount(self.labels, minlength=self.n_super * self.k_sub)

    def stats(self) -> dict[str, float]:
        """Super loss, mean sub loss, empty sub-clusters, smallest and largest cluster, short super-clusters."""
        sizes = self.sizes
        sub = [loss for loss in self.sub_losses if not np.isnan(loss)]
        return {
            "kmeans_loss": float(self.super_loss),
            "kmeans_loss_sub": float(np.mean(sub)) if sub else float("nan"),
            "n_empty": int((sizes == 0).sum()),
            "smallest": int(sizes.min()),
            "largest": int(sizes.max()),
            "n_short_super": len(self.short),
        }


def hierarchical_kmeans(
    x: np.ndarray, n_super: int, k_total: int, seed: int, fit: KMeansFit
) -> HierarchicalResult:
    """k-means of all rows into `n_super` super-clusters, then of each super-cluster's rows into
    ``k_total // n_super`` sub-clusters.

    The super level uses `seed`; super-cluster s uses `sub_seed(seed, s, n_super)`. A super-cluster with fewer
    points than k_sub gets one sub-cluster per point (recorded in `short`); its other sub ids stay empty. With
    n_super = 1 the labels are those of ``fit(x, k_total, seed)``.
    """
    arr = as_float32_matrix(x)
    n_super, k_total = int(n_super), int(k_total)
    if n_super < 1 or k_total < n_super or k_total % n_super:
        raise ValueError(
            f"hierarchical k-means: k={k_total} must be a positive multiple of the {n_super} super-clusters."
        )
    if n_super > len(arr):
        raise ValueError(f"{n_super} super-clusters is more than the number of images ({len(arr)}).")
    k_sub = k_total // n_super
    top = fit(arr, n_super, seed)
    super_labels = np.asarray(top.labels, dtype=np.int64)
    sub_labels = np.zeros(len(arr), dtype=np.int64)
    centroids = np.full((n_super, k_sub, arr.shape[1]), np.nan, dtype=np.float32)
    sub_losses: list[float] = []
    short: dict[int, int] = {}
    for s in range(n_super):
        members = np.flatnonzero(super_labels == s)
        if len(members) == 0:
            sub_losses.append(float("nan"))
            short[s] = 0
            continue
        k = min(k_sub, len(members))
        if k < k_sub:
            short[s] = k
        points = arr if len(members) == len(arr) else arr[members]  # no copy in the flat case
        result = fit(points, k, sub_seed(seed, s, n_super))
        sub_labels[members] = result.labels
        centroids[s, :k] = result.centroids
        sub_losses.append(float(result.loss))
    return HierarchicalResult(
        labels=super_labels * k_sub + sub_labels,
        super_labels=super_labels,
        sub_labels=sub_labels,
        k_sub=k_sub,
        super_loss=float(top.loss),
        sub_losses=sub_losses,
        centroids=centroids.reshape(n_super * k_sub, -1),
        super_centroids=np.asarray(top.centroids, dtype=np.float32),
        short=short,
    )
