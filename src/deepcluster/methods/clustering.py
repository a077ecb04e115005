"""What DeepCluster and DeeperCluster share before their clustering: PCA whitening, the choice of k-means, and
DeepCluster's other clustering, PIC (`pic_assignment`)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from deepcluster.cluster import KMeansResult, PCAWhitening, kmeans, kmeans_on_sample
from deepcluster.cluster.hierarchical import KMeansFit
from deepcluster.cluster.kmeans_torch import torch_kmeans
from deepcluster.cluster.pic import cluster_means, pic
from deepcluster.config import ClusterConfig, ConfigError, TrainConfig
from deepcluster.methods.base import Assignment, cluster_sizes
from deepcluster.methods.predict import pca_state

log = logging.getLogger("deepcluster")


def fit_clustering(
    config: TrainConfig, n_images: int, feature_dim: int | None, largest_fit: int, what: str
) -> TrainConfig:
    """`config` with its PCA and k-means settings fitted to `n_images` images of `feature_dim` values (see
    `Method.fit_to_data`); `largest_fit` is the most clusters one k-means fit makes (`what` says which).

    k-means on a sample (`cluster.kmeans_sample`) needs at least that many points: refused otherwise. PCA
    whitening to `cluster.pca_dim` needs as many directions of variance: at most the feature dimension, and one
    fewer than the rows it is trained on (centred rows span one dimension fewer; the last direction would be
    noise blown up by the whitening). The paper's 256 is an upper bound for ImageNet's million images: a larger
    pca_dim is lowered to what the data allows, with a warning."""
    sample = config.cluster.kmeans_sample
    if sample is not None and sample < largest_fit:
        raise ConfigError(
            f"cluster.kmeans_sample={sample} is smaller than {what}: k-means trains on at least as many points "
            f"as clusters; use cluster.kmeans_sample={largest_fit} or more, or leave it unset"
        )
    return fit_pca(config, n_images, feature_dim)


def fit_pic(config: TrainConfig, n_images: int, feature_dim: int | None) -> TrainConfig:
    """`config` with its PCA and PIC settings fitted to `n_images` images (see `fit_clustering`): each image
    needs `cluster.pic_nnn` other images as neighbours (refused otherwise); `cluster.k` plays no part."""
    nnn = config.cluster.pic_nnn
    if nnn >= n_images:
        raise ConfigError(
            f"cluster.pic_nnn={nnn}: PIC links each image to {nnn} others, and there are {n_images} images; "
            f"use cluster.pic_nnn={max(n_images - 1, 1)} or less"
        )
    return fit_pca(config, n_images, feature_dim)


def fit_pca(config: TrainConfig, n_images: int, feature_dim: int | None) -> TrainConfig:
    """`config` with `cluster.pca_dim` lowered (with a warning) to what `n_images` rows of `feature_dim` values
    allow (see `fit_clustering`); unchanged before the data (`feature_dim` None) or without PCA."""
    settings = config.cluster
    if feature_dim is None or settings.pca_dim == 0:
        return config
    rows = min(settings.pca_sample or n_images, n_images)
    allowed = min(rows - 1, feature_dim)
    if settings.pca_dim <= allowed:
        return config
    log.warning(
        "cluster.pca_dim=%d is more than PCA whitening can give from %d training rows of %d features (at most "
        "%d); using cluster.pca_dim=%d",
        settings.pca_dim,
        rows,
        feature_dim,
        allowed,
        allowed,
    )
    return dataclasses.replace(config, cluster=dataclasses.replace(settings, pca_dim=allowed))


def on_torch(backend: str, device: torch.device) -> bool:
    """Whether a `cluster.*_backend` setting runs on torch (on the run's `device`): torch, or auto on a CUDA
    run; else NumPy / faiss."""
    return backend == "torch" or (backend == "auto" and device.type == "cuda")


def pca_device(settings: ClusterConfig, device: torch.device) -> torch.device | None:
    """Where `PCAWhitening` runs for `settings.pca_backend`: on the run's `device` (`on_torch`), else None
    (NumPy)."""
    return device if on_torch(settings.pca_backend, device) else None


def whiten(
    features: np.ndarray, settings: ClusterConfig, seed: int, device: torch.device
) -> tuple[PCAWhitening, np.ndarray]:
    """The PCA-whitening (and L2-normalisation) `settings` asks for, fitted on `features` with `seed` (on the
    device `pca_device` picks), and the features it whitens."""
    on = pca_device(settings, device)
    pca = PCAWhitening(dim=settings.pca_dim).fit(
        features, sample_size=settings.pca_sample, seed=seed, device=on
    )
    return pca, pca.apply(features, device=on)


def kmeans_fit(settings: ClusterConfig, device: torch.device) -> KMeansFit:
    """(points, k, seed) -> KMeansResult with the backend `settings.kmeans_backend` picks (torch, or auto on a
    CUDA run: `torch_kmeans` on the run's device; else faiss), trained on `settings.kmeans_sample` random
    points when that is set (`kmeans_on_sample`, its rows drawn with the same seed)."""
    torch_backend = on_torch(settings.kmeans_backend, device)

    def fit(points: np.ndarray, k: int, seed: int) -> KMeansResult:
        def train(rows: np.ndarray) -> KMeansResult:
            if torch_backend:
                return torch_kmeans(rows, k, n_iter=settings.kmeans_iters, seed=seed, device=device)
            return kmeans(rows, k, n_iter=settings.kmeans_iters, seed=seed)

        return kmeans_on_sample(points, k, settings.kmeans_sample, seed, train)

    return fit


def pic_assignment(
    points: np.ndarray, pca: PCAWhitening, settings: ClusterConfig, seed: int, device: torch.device
) -> Assignment:
    """PIC's clusters of the whitened `points` (on the run's `device` when it is a GPU), as many classes as it
    found, and for `predict` each cluster's centre: the mean of its members' whitened points (new images go to
    the nearest centre, as k-means' do to the nearest centroid)."""
    result = pic(
        points,
        nnn=settings.pic_nnn,
        sigma=settings.pic_sigma,
        alpha=settings.pic_alpha,
        iterations=settings.pic_iters,
        singletons=settings.pic_singletons,
        seed=seed,
        device=device if device.type == "cuda" else None,
    )
    n = result.n_clusters
    stats = {
        **cluster_sizes(result.labels, n),
        "pic_moved": result.moved,
        "pic_singletons": result.singletons,
    }
    centres = cluster_means(points, result.labels, n)
    return Assignment(result.labels, n, stats, state={"centroids": centres, **pca_state(pca)})
