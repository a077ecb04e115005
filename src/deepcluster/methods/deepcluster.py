"""DeepCluster (Caron et al., ECCV 2018): k-means on PCA-whitened features, a fresh linear top layer per clustering."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from deepcluster.cluster import KMeansResult, PCAWhitening
from deepcluster.cluster.distributed import distributed_kmeans, distributed_pca_fit
from deepcluster.config import TrainConfig
from deepcluster.methods.base import Assignment, ExtractingMethod, ProcessGroup, cluster_sizes
from deepcluster.methods.clustering import (
    fit_clustering,
    fit_pic,
    kmeans_fit,
    pca_device,
    pic_assignment,
    whiten,
)
from deepcluster.methods.predict import Prediction, nearest, pca_apply, pca_state
from deepcluster.models import ClassifierHead


class DeepCluster(ExtractingMethod):
    """Features: the penultimate FC output before its ReLU; labels: k-means, or PIC (`--clustering pic`, as many
    clusters as it finds); head: ReLU + Linear(D, clusters)."""

    name = "deepcluster"
    summary = "k-means (or PIC) labels, a fresh top layer each epoch (Caron et al., 2018)"
    clusterings = ("kmeans", "pic")

    @classmethod
    def fit_to_data(cls, config: TrainConfig, n_images: int, feature_dim: int | None) -> TrainConfig:
        if config.cluster.algorithm == "pic":
            return fit_pic(config, n_images, feature_dim)
        k = super().fit_to_data(config, n_images, feature_dim).cluster.k
        return fit_clustering(config, n_images, feature_dim, k, f"--k {k}")

    def extract(self, backbone: nn.Module, heads: nn.Module | None, images: torch.Tensor) -> torch.Tensor:
        return backbone(images)

    def assign(self, values: np.ndarray, heads: nn.Module | None, seed: int) -> Assignment:
        settings = self.config.cluster
        pca, points = whiten(values, settings, seed, self.device)
        if settings.algorithm == "pic":  # as many classes as PIC finds: the top layer follows them
            return pic_assignment(points, pca, settings, seed, self.device)
        return _assignment(kmeans_fit(settings, self.device)(points, settings.k, seed), pca)

    def predict(self, values: np.ndarray, state: dict[str, Any]) -> Prediction:
        """The nearest centroid (squared L2) of the features whitened by the assignment's PCA (with PIC: the
        nearest cluster centre, the mean of the cluster's whitened members)."""
        return Prediction.from_columns([nearest(pca_apply(state, values), state["centroids"])], "distance")

    def assign_sharded(self, shard: np.ndarray, seed: int, processes: ProcessGroup) -> Assignment:
        """The PCA (covariance all-reduced) and torch k-means (sums and counts all-reduced) of `assign` with
        `cluster.kmeans_backend=torch`, over the processes' shards: the same labels, on every process."""
        settings = self.config.cluster
        device = processes.device
        pca = distributed_pca_fit(shard, settings.pca_dim, settings.pca_sample, seed, device=device)
        points = pca.apply(shard, device=pca_device(settings, device))
        result = distributed_kmeans(
            points, settings.k, n_iter=settings.kmeans_iters, seed=seed, device=device
        )
        return _assignment(result, pca)

    def build_heads(self, feature_dim: int, assignment: Assignment, generator: torch.Generator) -> nn.Module:
        return ClassifierHead(feature_dim, assignment.n_classes, generator=generator)


def _assignment(result: KMeansResult, pca: PCAWhitening) -> Assignment:
    """k-means labels with their statistics (and the whitening and centroids that `predict` reapplies)."""
    k = result.centroids.shape[0]
    stats = {
        "kmeans_loss": float(result.loss),
        **cluster_sizes(result.labels, k),
        "n_empty": int(result.n_empty),
    }
    return Assignment(result.labels, k, stats, state={"centroids": result.centroids, **pca_state(pca)})
