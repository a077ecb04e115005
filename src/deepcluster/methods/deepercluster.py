"""DeeperCluster (Caron et al., ICCV 2019): hierarchical k-means, and rotation prediction joined with the clusters.

The k clusters come from a two-level k-means on PCA-whitened features (m super-clusters, k / m sub-clusters in
each). Each training image is shown rotated by a random quarter turn; the target is the pair (super-class,
sub-class) with super-class = (super-cluster, rotation), 4m of them, and sub-class = the cluster inside its
super-cluster. The network predicts the super-class, then the sub-class with the head of the true super-class;
the loss is the sum of the two cross-entropies. Labels are computed on unrotated images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcluster.cluster.hierarchical import hierarchical_kmeans
from deepcluster.config import ConfigError, TrainConfig, option
from deepcluster.config.options import positive
from deepcluster.data.rotations import N_ROTATIONS, encode_targets, rotate_quarter_turns
from deepcluster.data.samplers import hierarchical_cluster_sample
from deepcluster.methods.base import Assignment, ExtractingMethod, regular_updates
from deepcluster.methods.clustering import fit_clustering, kmeans_fit, whiten
from deepcluster.methods.predict import Prediction, nearest, pca_apply, pca_state
from deepcluster.models import HierarchicalHead, channels_last

RECLUSTER_EVERY = 3
"""Epochs between two clusterings when `cluster.recluster_every` is not set (the paper's T)."""


@dataclass
class DeeperClusterConfig:
    """DeeperCluster (Caron et al., 2019): (rotation, cluster) targets, clustered hierarchically."""

    super_clusters: int = option(
        4,
        "deepercluster: super-clusters m; k-means first splits the data into m super-clusters, then each into "
        "k / m sub-clusters (1: flat; k must be a multiple of m)",
        flag="--super-clusters",
        check=positive,
    )
    rotations: bool = option(
        True,
        "show each image rotated by 0, 90, 180 or 270 degrees and predict the rotation with the "
        "cluster (the super-classes are the 4m (super-cluster, rotation) pairs); off: DeepCluster with "
        "hierarchical k-means",
        flag="--no-rotations",
    )

    def check(self, config: TrainConfig) -> None:
        if config.method == DeeperCluster.name and config.cluster.k % self.super_clusters:
            raise ConfigError(
                f"--k {config.cluster.k} is not a multiple of deepercluster.super_clusters={self.super_clusters}: "
                "every super-cluster is split into k / m sub-clusters; choose k as a multiple of m"
            )


class DeeperCluster(ExtractingMethod):
    """Features: the backbone's embedding of the unrotated image; labels: hierarchical k-means (global ids);
    heads: a super-class head and one sub-class head per super-class; targets: (super-class, sub-class)."""

    name = "deepercluster"
    summary = "(rotation, cluster) targets from a two-level k-means (Caron et al., 2019)"
    Config = DeeperClusterConfig

    @property
    def n_super(self) -> int:
        """m, the number of super-clusters."""
        return self.config.deepercluster.super_clusters

    @property
    def k_sub(self) -> int:
        """Sub-clusters per super-cluster, k / m."""
        return self.config.cluster.k // self.n_super

    @property
    def n_rotations(self) -> int:
        """4 with rotations, else 1."""
        return N_ROTATIONS if self.config.deepercluster.rotations else 1

    def label_update_steps(self, steps_per_epoch: int, epochs: int) -> list[int]:
        """Every `cluster.recluster_every`-th epoch (every 3rd when unset, the paper's T), or every
        `cluster.label_every` steps."""
        every = self.config.cluster.recluster_every or RECLUSTER_EVERY
        return regular_updates(self.config, steps_per_epoch, epochs, every)

    @classmethod
    def fit_to_data(cls, config: TrainConfig, n_images: int, feature_dim: int | None) -> TrainConfig:
        config = super().fit_to_data(config, n_images, feature_dim)
        m = config.deepercluster.super_clusters
        k_sub = config.cluster.k // m
        what = f"the {max(m, k_sub)} clusters of one k-means fit (--super-clusters {m}, k / m = {k_sub})"
        return fit_clustering(config, n_images, feature_dim, max(m, k_sub), what)

    def extract(self, backbone: nn.Module, heads: nn.Module | None, images: torch.Tensor) -> torch.Tensor:
        return backbone(images)

    def assign(self, values: np.ndarray, heads: nn.Module | None, seed: int) -> Assignment:
        settings = self.config.cluster
        pca, points = whiten(values, settings, seed, self.device)
        fit = kmeans_fit(settings, self.device)
        result = hierarchical_kmeans(points, self.n_super, settings.k, seed, fit)
        return Assignment(
            labels=result.labels,
            n_classes=settings.k,
            stats={**result.stats(), "n_super": self.n_super},
            state={
                "centroids": result.centroids,
                "super_centroids": result.super_centroids,
                **pca_state(pca),
            },
        )

    def predict(self, values: np.ndarray, state: dict[str, Any]) -> Prediction:
        """The nearest super-centroid, then the nearest sub-centroid inside it (squared L2, whitened features);
        the runner-up is the second sub-cluster of the same super-cluster."""
        points = pca_apply(state, values)
        supers = nearest(points, state["super_centroids"])[0]
        k_sub, centroids = self.k_sub, state["centroids"]
        columns = [
            np.zeros(len(points), dtype=dtype) for dtype in (np.int64, np.float64, np.int64, np.float64)
        ]
        for s in np.unique(supers):
            rows = np.flatnonzero(supers == s)
            found = nearest(points[rows], centroids[s * k_sub : (s + 1) * k_sub])
            for column, part, offset in zip(columns, found, (s * k_sub, 0, s * k_sub, 0), strict=True):
                column[rows] = part + offset
        return Prediction.from_columns([tuple(columns)], "distance")

    def sample(self, labels: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
        return hierarchical_cluster_sample(labels, self.k_sub, n_samples, seed=seed)

    def forward(
        self, backbone: nn.Module, heads: nn.Module, x: Any, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Each image rotated by a quarter turn drawn from `generator` (when rotations are on); targets int64
        [B, 2]: (super-class, sub-class); outputs: the super-class logits and the true super-class's sub-class
        logits."""
        labels = labels.long()
        if self.n_rotations > 1:
            turns = torch.randint(self.n_rotations, (x.shape[0],), generator=generator).to(labels.device)
            x = rotate_quarter_turns(x, turns)
        else:
            turns = torch.zeros_like(labels)
        super_class, sub_class = encode_targets(labels, turns, self.k_sub, self.n_rotations)
        return heads(backbone(channels_last(x)), super_class), torch.stack([super_class, sub_class], dim=1)

    def build_heads(self, feature_dim: int, assignment: Assignment, generator: torch.Generator) -> nn.Module:
        n_super, k = self.n_super, assignment.n_classes
        return HierarchicalHead(feature_dim, n_super * self.n_rotations, k // n_super, generator=generator)

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        return hierarchical_loss(outputs, targets)


def hierarchical_loss(outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Super-class plus sub-class cross-entropy (float32): outputs ([B, S], [B, n_sub]) logits, targets [B, 2]."""
    super_logits, sub_logits = outputs
    if targets.ndim != 2 or targets.shape[1] != 2 or not len(targets) == len(super_logits) == len(sub_logits):
        raise ValueError(
            f"hierarchical_loss: targets {tuple(targets.shape)} must be [B, 2] for outputs "
            f"{tuple(super_logits.shape)} and {tuple(sub_logits.shape)}"
        )
    super_loss = nn.functional.cross_entropy(super_logits.float(), targets[:, 0])
    return super_loss + nn.functional.cross_entropy(sub_logits.float(), targets[:, 1])
