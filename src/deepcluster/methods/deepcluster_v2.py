"""DeepCluster-v2 (Caron et al., NeurIPS 2020): spherical k-means on the memory bank of projections; the
prototypes are the centroids, never trained (see `methods/v2.py` for the shared network, crops and bank)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcluster.cluster.spherical import spherical_kmeans, torch_spherical_kmeans
from deepcluster.config import option
from deepcluster.config.options import positive
from deepcluster.methods.base import Assignment
from deepcluster.methods.clustering import on_torch
from deepcluster.methods.predict import Prediction, most_similar
from deepcluster.methods.v2 import SetLabels, V2Config, V2Method, prototypes_of, unit_rows
from deepcluster.models import PrototypeHead
from deepcluster.seeding import derive_seed


@dataclass
class DeepClusterV2Config(V2Config):
    """DeepCluster-v2: V2Config plus the spherical k-means."""

    kmeans_iters: int = option(10, "spherical k-means iterations per set", check=positive)


class DeepClusterV2(V2Method):
    """Labels: spherical k-means of each set's projections (a pass or the bank); prototypes: the normalised
    centroids."""

    name = "deepcluster-v2"
    summary = "spherical k-means of the projections, prototypes = centroids, multi-crop (Caron et al., 2020)"
    Config = DeepClusterV2Config
    # What the sweep found learns most within minutes, on both selection sets and seeds (benchmarks/sweep.py,
    # README "Learning within a budget"): LARS (as the SwAV paper trains it) and the first layer from the data.
    defaults = {
        **V2Method.defaults,
        "model": {**V2Method.defaults["model"], "first_conv": "patches"},
        "optim": {**V2Method.defaults["optim"], "optimizer": "lars"},
    }

    def assign_set(
        self, projections: np.ndarray, heads: nn.Module | None, index: int, seed: int
    ) -> SetLabels:
        settings, k = self.config.section(self.section()), self.config.cluster.k
        set_seed = derive_seed(seed, "set", index)
        if on_torch(self.config.cluster.kmeans_backend, self.device):
            result = torch_spherical_kmeans(
                projections, k, settings.kmeans_iters, set_seed, device=self.device
            )
        else:
            result = spherical_kmeans(projections, k, settings.kmeans_iters, set_seed)
        return SetLabels(
            result.labels, result.centroids, {"kmeans_loss": result.loss, "n_empty": result.n_empty}
        )

    def keep_heads(self, heads: nn.Module, assignment: Assignment) -> bool:
        """The prototypes become the sets' new centroids."""
        if isinstance(heads, PrototypeHead):
            heads.set_prototypes(torch.from_numpy(assignment.state["prototypes"]))
        return True

    def predict(self, values: np.ndarray, state: dict[str, Any]) -> Prediction:
        """Each set's nearest prototype (centroid) by cosine."""
        z, prototypes = unit_rows(values), prototypes_of(state)
        return Prediction.from_columns(
            [most_similar(z, prototypes[s]) for s in range(len(prototypes))], "similarity"
        )
