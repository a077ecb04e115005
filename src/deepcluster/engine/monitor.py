"""The online k-NN monitor: how well the method's embedding separates the true classes, each epoch.

A fixed, seeded sample of the training images with their true labels (for evaluation only: the labels never
reach training) is embedded in eval mode on the cluster view, and weighted k-NN (k = 20, T = 0.07, cosine,
leave-one-out within the sample) gives `knn_true`. On 2,000 images it costs a few percent of an epoch at most.
"""

from __future__ import annotations

import numpy as np
import torch

from deepcluster.cluster.knn import weighted_knn_accuracy
from deepcluster.data.views import ClusterView
from deepcluster.engine.device import Precision
from deepcluster.engine.features import extract_features
from deepcluster.engine.networks import Networks

KNN_K = 20
KNN_TEMPERATURE = 0.07


class KnnMonitor:
    """k-NN accuracy of the true classes on a fixed sample of the images."""

    def __init__(
        self, images: torch.Tensor, true_labels: np.ndarray, size: int, seed: int, view: ClusterView
    ) -> None:
        n = len(true_labels)
        rows = np.random.default_rng(seed).choice(n, size=min(size, n), replace=False)
        self.rows = np.sort(rows)
        self.images = images[torch.as_tensor(self.rows).to(images.device)]
        self.labels = np.asarray(true_labels)[self.rows]
        self.view = view

    def measure(self, nets: Networks, precision: Precision, batch_size: int) -> float:
        """knn_true of the backbone's embedding (the networks are left in train mode afterwards)."""
        nets.eval()
        features = extract_features(nets.backbone, self.images, self.view, batch_size, precision)
        nets.train()
        return weighted_knn_accuracy(features, self.labels, k=KNN_K, temperature=KNN_TEMPERATURE)
