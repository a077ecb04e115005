"""DeepCluster-v2 (Caron et al., NeurIPS 2020): spherical k-means on the memory bank of projections; the
prototypes are the centroids, never trained (see `methods/v2.py` for the shared network, crops and bank)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepcluster.cluster.spherical import spherical_kmeans, torch_spherical_kmeans
from deepcluster.config import option
from deepcluster.config.options import positive
from deepcluster.methods.v2 import V2Config, V2Method
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

    def assign_bank(self, bank: np.ndarray, index: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
        settings, k = self.config.section(self.section()), self.config.cluster.k
        set_seed = derive_seed(seed, "set", index)
        backend = self.config.cluster.kmeans_backend
        if backend == "torch" or (backend == "auto" and self.device.type == "cuda"):
            result = torch_spherical_kmeans(bank, k, settings.kmeans_iters, set_seed, device=self.device)
        else:
            result = spherical_kmeans(bank, k, settings.kmeans_iters, set_seed)
        return result.labels, result.centroids, {"kmeans_loss": result.loss, "n_empty": result.n_empty}
