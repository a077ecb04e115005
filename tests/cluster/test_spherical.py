"""Spherical k-means (the DeepCluster-v2 assigner): faiss and torch, directions not lengths, no empty prototype."""

from __future__ import annotations

import numpy as np
import pytest

from deepcluster.cluster.metrics import nmi
from deepcluster.cluster.spherical import spherical_kmeans, torch_spherical_kmeans


def test_spherical_kmeans_finds_directions_not_lengths() -> None:
    rng = np.random.default_rng(0)
    directions = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    truth = np.repeat(np.arange(3), 40)
    lengths = rng.uniform(0.1, 10.0, size=(120, 1))  # lengths vary 100x: L2 k-means would split by length
    x = (directions[truth] + rng.normal(0, 0.05, size=(120, 3))) * lengths
    for result in (
        spherical_kmeans(x, 3, n_iter=10, seed=1),
        torch_spherical_kmeans(x, 3, n_iter=10, seed=1),
    ):
        assert result.n_empty == 0
        np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, rtol=1e-5)
        matched = {int(np.argmax(np.abs(result.centroids @ d))) for d in directions}
        assert len(matched) == 3
        for cluster in range(3):  # each cluster is one direction
            assert len(set(truth[result.labels == cluster])) == 1
        cos = np.einsum(
            "nd,nd->n", x / np.linalg.norm(x, axis=1, keepdims=True), result.centroids[result.labels]
        )
        assert result.loss == pytest.approx(float(np.sum(2 - 2 * cos)), rel=1e-4)


def test_faiss_and_torch_spherical_kmeans_agree() -> None:
    x = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    a, b = spherical_kmeans(x, 5, n_iter=15, seed=4), torch_spherical_kmeans(x, 5, n_iter=15, seed=4)
    assert nmi(a.labels, b.labels) > 0.9
    assert abs(a.loss - b.loss) / a.loss < 0.02


def test_every_prototype_keeps_an_image() -> None:
    x = np.repeat(
        np.eye(4, dtype=np.float32), [50, 1, 1, 1], axis=0
    )  # one dense direction, three lone points
    result = spherical_kmeans(x, 6, n_iter=5, seed=0)
    assert np.bincount(result.labels, minlength=6).min() >= 1
