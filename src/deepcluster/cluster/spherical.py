"""Spherical k-means: k-means of L2-normalised rows by cosine similarity, with unit-norm centroids (the
prototypes of DeepCluster-v2). faiss on the CPU (`spherical_kmeans`), PyTorch on any device
(`torch_spherical_kmeans`); both take and return what `kmeans` does.

Empty clusters: during the iterations faiss re-seeds an empty cluster by splitting a large one, and the torch
version keeps its previous centroid (as the SwAV reference code does); after the final assignment both fill
every empty cluster by splitting the largest (`fill_empty_clusters`, as for DeepCluster), so each of the k
prototypes owns at least one image. `n_empty` counts the clusters that were empty before that repair.
`loss` is the sum of squared distances to the centroids, 2 - 2 cos on unit vectors.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from deepcluster.cluster.kmeans import KMeansResult, checked_kmeans_input, fill_empty_clusters
from deepcluster.cluster.kmeans_torch import checked_device, default_batch_rows, initial_generator
from deepcluster.cluster.preprocess import l2_normalize


def _finish(points: np.ndarray, labels: np.ndarray, centroids: np.ndarray, seed: int, losses: list[float]):
    """Fill empty clusters, renormalise the centroids, and measure the final objective."""
    labels, centroids, n_empty = fill_empty_clusters(points, labels, centroids, seed=seed)
    centroids = l2_normalize(centroids)
    cosine = np.einsum("nd,nd->n", points, centroids[labels])
    loss = float(np.sum(2.0 - 2.0 * cosine.astype(np.float64)))
    return KMeansResult(labels=labels, centroids=centroids, loss=loss, n_empty=n_empty, losses=losses)


def spherical_kmeans(x: np.ndarray, k: int, n_iter: int = 10, seed: int = 0) -> KMeansResult:
    """Spherical k-means of the rows of `x` (L2-normalised here) with faiss; labels by largest cosine."""
    arr, k, n_iter = checked_kmeans_input(x, k, n_iter)
    points = l2_normalize(arr)
    n, d = points.shape
    params = faiss.ClusteringParameters()
    params.niter = n_iter
    params.seed = int(seed) % (2**31 - 1)
    params.spherical = True
    params.min_points_per_centroid = 1
    params.max_points_per_centroid = n // k + 1  # never subsample
    clustering = faiss.Clustering(d, k, params)
    clustering.train(points, faiss.IndexFlatIP(d))
    centroids = faiss.vector_to_array(clustering.centroids).reshape(k, d)
    index = faiss.IndexFlatIP(d)
    index.add(np.ascontiguousarray(centroids))
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, 1 << 16):
        labels[start : start + (1 << 16)] = index.search(points[start : start + (1 << 16)], 1)[1][:, 0]
    stats = clustering.iteration_stats
    losses = [2.0 * n - 2.0 * float(stats.at(i).obj) for i in range(stats.size())]  # faiss sums the cosines
    return _finish(points, labels, centroids, seed, losses)


@torch.no_grad()
def torch_spherical_kmeans(
    x: np.ndarray, k: int, n_iter: int = 10, seed: int = 0, device: str | torch.device = "cpu"
) -> KMeansResult:
    """Spherical k-means in PyTorch on `device`: k seeded distinct rows as initial centroids (the same rows as
    `torch_kmeans` draws), then `n_iter` rounds of largest-cosine assignment and normalised means."""
    arr, k, n_iter = checked_kmeans_input(x, k, n_iter)
    points = l2_normalize(arr)
    n = points.shape[0]
    dev = checked_device(device)
    rows = default_batch_rows(n, k)
    xs = torch.from_numpy(points).to(dev)
    init = torch.randperm(n, generator=initial_generator(seed))[:k]
    centroids = xs[init.to(dev)].clone()
    losses: list[float] = []

    def assign() -> tuple[torch.Tensor, float]:
        labels = torch.empty(n, dtype=torch.int64, device=dev)
        total = 0.0
        for start in range(0, n, rows):
            best, labels[start : start + rows] = (xs[start : start + rows] @ centroids.T).max(dim=1)
            total += float(best.double().sum())
        return labels, 2.0 * n - 2.0 * total

    for _ in range(n_iter):
        labels, loss = assign()
        losses.append(loss)
        sums = torch.zeros(k, xs.shape[1], dtype=torch.float64, device=dev).index_add_(0, labels, xs.double())
        filled = torch.bincount(labels, minlength=k) > 0  # an empty cluster keeps its centroid
        centroids = torch.where(
            filled[:, None], torch.nn.functional.normalize(sums, dim=1).float(), centroids
        )
    labels, _ = assign()
    return _finish(points, labels.cpu().numpy(), centroids.cpu().numpy(), seed, losses)
