"""Tests for deepcluster.cluster.kmeans_torch: the PyTorch k-means beside the faiss one."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from deepcluster.cluster import KMeansResult, kmeans
from deepcluster.cluster import kmeans_torch as tk
from deepcluster.cluster.kmeans_torch import torch_kmeans

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(k: int = 5, per_blob: int = 60, d: int = 8, scale: float = 10.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * scale
    truth = np.repeat(np.arange(k), per_blob)
    x = (centers[truth] + rng.standard_normal((k * per_blob, d)) * 0.3).astype(np.float32)
    return x, truth


def _gaussian(n: int = 1000, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _check_valid(result: KMeansResult, n: int, k: int, d: int, n_iter: int) -> None:
    assert isinstance(result, KMeansResult)
    assert result.labels.shape == (n,) and result.labels.dtype == np.int64
    assert result.centroids.shape == (k, d) and result.centroids.dtype == np.float32
    assert np.bincount(result.labels, minlength=k).min() >= 1 and result.labels.max() == k - 1
    assert len(result.losses) == n_iter and result.loss == result.losses[-1]


def test_recovers_well_separated_blobs() -> None:
    x, truth = _blobs()
    # Random init can put two seeds in one blob; the lowest-loss run of a few seeds is the true partition.
    results = [torch_kmeans(x, 5, n_iter=10, seed=s) for s in range(6)]
    for r in results:
        _check_valid(r, len(x), 5, 8, 10)
    best = min(results, key=lambda r: r.loss)
    assert adjusted_rand_score(truth, best.labels) == 1.0
    assert best.n_empty == 0
    for j in range(5):  # a Lloyd fixed point: centroids are the means of their members
        np.testing.assert_allclose(best.centroids[j], x[best.labels == j].mean(axis=0), atol=1e-4)


def test_objective_does_not_increase() -> None:
    result = torch_kmeans(_gaussian(), 20, n_iter=15, seed=3)
    losses = np.array(result.losses)
    assert result.n_empty == 0
    assert np.all(np.diff(losses) <= 1e-6 * losses[0])
    assert losses[-1] < losses[0]


def test_deterministic_for_a_seed() -> None:
    x = _gaussian(n=600)
    a, b = torch_kmeans(x, 12, n_iter=8, seed=7), torch_kmeans(x, 12, n_iter=8, seed=7)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.losses == b.losses
    others = [torch_kmeans(x, 12, n_iter=8, seed=s).labels for s in range(3)]
    assert any(not np.array_equal(others[0], o) for o in others[1:])


def test_objective_close_to_faiss() -> None:
    x, _ = _blobs(k=10, per_blob=50, d=16, scale=1.5, seed=1)
    for seed in range(2):
        ours, ref = torch_kmeans(x, 10, seed=seed), kmeans(x, 10, seed=seed)
        # Same seed -> same initial points as faiss (both shuffle with a Mersenne Twister seeded alike).
        assert ours.losses[0] == pytest.approx(ref.losses[0], rel=1e-4)
        assert ours.loss == pytest.approx(ref.loss, rel=0.03)


def test_duplicate_points_leave_clusters_empty_then_filled() -> None:
    # 5 distinct points, 20 copies each: at most 5 clusters can be reached by the Lloyd iterations.
    rng = np.random.default_rng(0)
    x = np.repeat(rng.standard_normal((5, 4)).astype(np.float32), 20, axis=0)
    result = torch_kmeans(x, 8, n_iter=5, seed=0)
    _check_valid(result, 100, 8, 4, 5)
    assert result.n_empty >= 3
    # every cluster holds copies of a single point: splitting never mixes distinct points
    for j in range(8):
        assert len(np.unique(x[result.labels == j], axis=0)) == 1


def test_empty_clusters_are_split_during_training(monkeypatch: pytest.MonkeyPatch) -> None:
    # Half the points are copies of one point, so drawing two of them as initial centroids leaves one
    # cluster empty (ties go to the smaller id); splitting a large cluster must re-seed it.
    rng = np.random.default_rng(0)
    x = np.concatenate([np.tile(rng.standard_normal(4) + 5, (50, 1)), rng.standard_normal((50, 4)) - 5])
    splits: list[int] = []
    split = tk._split_empty_clusters

    def counting_split(*args: object) -> int:
        splits.append(split(*args))
        return splits[-1]

    monkeypatch.setattr(tk, "_split_empty_clusters", counting_split)
    for seed in range(6):
        result = torch_kmeans(x.astype(np.float32), 3, n_iter=10, seed=seed)
        assert result.n_empty == 0
    assert sum(splits) > 0


def test_split_copies_a_large_centroid_with_symmetric_perturbation() -> None:
    centroids = torch.tensor([[0.0, 0.0, 0.0], [2.0, 4.0, 8.0], [1.0, 1.0, 1.0]])
    sizes = torch.tensor([0.0, 10.0, 1.0], dtype=torch.float64)  # only cluster 1 has points to spare
    n_split = tk._split_empty_clusters(centroids, sizes, torch.Generator().manual_seed(0))
    assert n_split == 1
    eps = 1.0 / 1024.0
    np.testing.assert_allclose(centroids[0], [2 * (1 + eps), 4 * (1 - eps), 8 * (1 + eps)], rtol=1e-6)
    np.testing.assert_allclose(centroids[1], [2 * (1 - eps), 4 * (1 + eps), 8 * (1 - eps)], rtol=1e-6)
    assert sizes.tolist() == [5.0, 5.0, 1.0]


def test_batches_give_the_same_result() -> None:
    x = _gaussian(n=700)
    whole = torch_kmeans(x, 15, n_iter=8, seed=1)
    batched = torch_kmeans(x, 15, n_iter=8, seed=1, batch_rows=64)
    np.testing.assert_array_equal(whole.labels, batched.labels)
    np.testing.assert_allclose(whole.losses, batched.losses, rtol=1e-6)
    assert tk.default_batch_rows(700, 15) == 700
    assert tk.default_batch_rows(10**7, 10**4) == (1 << 24) // 10**4


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"k": 0}, "k=0"),
        ({"k": 31}, "k=31"),
        ({"k": 3, "n_iter": 0}, "kmeans_iters=0"),
        ({"k": 3, "batch_rows": 0}, "batch_rows=0"),
    ],
)
def test_invalid_options_raise(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        torch_kmeans(_gaussian(n=30, d=4), **kwargs)


def test_non_finite_features_raise() -> None:
    x = _gaussian(n=30, d=4)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        torch_kmeans(x, 3)


def test_package_import_does_not_import_torch() -> None:
    code = "import sys, deepcluster.cluster; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    x, truth = _blobs(k=8, per_blob=100, d=16, seed=2)
    cpu = torch_kmeans(x, 8, n_iter=10, seed=4)
    gpu = torch_kmeans(x, 8, n_iter=10, seed=4, device="cuda", batch_rows=128)
    again = torch_kmeans(x, 8, n_iter=10, seed=4, device="cuda", batch_rows=128)
    np.testing.assert_array_equal(cpu.labels, gpu.labels)
    np.testing.assert_allclose(cpu.centroids, gpu.centroids, atol=1e-4)
    np.testing.assert_allclose(cpu.losses, gpu.losses, rtol=1e-5)
    np.testing.assert_array_equal(gpu.labels, again.labels)
    np.testing.assert_array_equal(gpu.centroids, again.centroids)
