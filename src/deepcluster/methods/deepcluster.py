"""DeepCluster (Caron et al., ECCV 2018): k-means on PCA-whitened features, a fresh linear top layer per clustering."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deepcluster.cluster import PCAWhitening, kmeans
from deepcluster.cluster.kmeans_torch import torch_kmeans
from deepcluster.engine.device import resolve_device
from deepcluster.methods.base import Assignment, Method
from deepcluster.models import ClassifierHead


class DeepCluster(Method):
    """Features: the penultimate FC output before its ReLU; labels: k-means; head: ReLU + Linear(D, k)."""

    name = "deepcluster"

    def extract(self, backbone: nn.Module, heads: nn.Module | None, images: torch.Tensor) -> torch.Tensor:
        return backbone(images)

    def assign(self, features: np.ndarray, seed: int) -> Assignment:
        settings = self.config.cluster
        pca = PCAWhitening(dim=settings.pca_dim).fit(features, sample_size=settings.pca_sample, seed=seed)
        reduced = pca.apply(features)
        device = resolve_device(self.config.run.device)
        backend = settings.kmeans_backend
        if backend == "torch" or (backend == "auto" and device.type == "cuda"):
            result = torch_kmeans(reduced, settings.k, n_iter=settings.kmeans_iters, seed=seed, device=device)
        else:
            result = kmeans(reduced, settings.k, n_iter=settings.kmeans_iters, seed=seed)
        sizes = np.bincount(result.labels, minlength=settings.k)
        return Assignment(
            labels=result.labels,
            n_classes=settings.k,
            stats={
                "kmeans_loss": float(result.loss),
                "n_empty": int(result.n_empty),
                "smallest": int(sizes.min()),
                "largest": int(sizes.max()),
            },
            state={"centroids": result.centroids},
        )

    def build_heads(self, feature_dim: int, assignment: Assignment, generator: torch.Generator) -> nn.Module:
        return ClassifierHead(feature_dim, assignment.n_classes, generator=generator)
