"""What DeepCluster and DeeperCluster share before their k-means: PCA whitening and the choice of k-means."""

from __future__ import annotations

import numpy as np
import torch

from deepcluster.cluster import KMeansResult, PCAWhitening, kmeans, kmeans_on_sample
from deepcluster.cluster.hierarchical import KMeansFit
from deepcluster.cluster.kmeans_torch import torch_kmeans
from deepcluster.config import ClusterConfig


def whitened(features: np.ndarray, settings: ClusterConfig, seed: int) -> np.ndarray:
    """The features PCA-whitened (and L2-normalised) as `settings` asks, the PCA fitted with `seed`."""
    pca = PCAWhitening(dim=settings.pca_dim).fit(features, sample_size=settings.pca_sample, seed=seed)
    return pca.apply(features)


def kmeans_fit(settings: ClusterConfig, device: torch.device) -> KMeansFit:
    """(points, k, seed) -> KMeansResult with the backend `settings.kmeans_backend` picks (torch, or auto on a
    CUDA run: `torch_kmeans` on the run's device; else faiss), trained on `settings.kmeans_sample` random
    points when that is set (`kmeans_on_sample`, its rows drawn with the same seed)."""
    backend = settings.kmeans_backend
    on_torch = backend == "torch" or (backend == "auto" and device.type == "cuda")

    def fit(points: np.ndarray, k: int, seed: int) -> KMeansResult:
        def train(rows: np.ndarray) -> KMeansResult:
            if on_torch:
                return torch_kmeans(rows, k, n_iter=settings.kmeans_iters, seed=seed, device=device)
            return kmeans(rows, k, n_iter=settings.kmeans_iters, seed=seed)

        return kmeans_on_sample(points, k, settings.kmeans_sample, seed, train)

    return fit
