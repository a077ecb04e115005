"""Tests for deepcluster.cluster.kmeans: faiss k-means, assignment and empty-cluster filling."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from deepcluster.cluster import KMeansResult, assign, fill_empty_clusters, kmeans


def _blobs(k: int = 5, per_blob: int = 60, d: int = 8, spread: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * 10.0
    truth = np.repeat(np.arange(k), per_blob)
    x = (centers[truth] + rng.standard_normal((k * per_blob, d)) * spread).astype(np.float32)
    return x, truth


def _check_valid(result: KMeansResult, n: int, k: int, d: int) -> None:
    assert result.labels.shape == (n,) and result.labels.dtype == np.int64
    assert result.centroids.shape == (k, d) and result.centroids.dtype == np.float32
    assert np.bincount(result.labels, minlength=k).min() >= 1
    assert result.labels.min() >= 0 and result.labels.max() == k - 1


def test_recovers_well_separated_blobs() -> None:
    x, truth = _blobs()
    # Random init (faiss's, as in DeepCluster) can put two seeds in one blob and get stuck; among several
    # seeds the run with the lowest loss is the true partition, and it is recovered exactly.
    results = [kmeans(x, 5, n_iter=20, seed=s) for s in range(8)]
    for r in results:
        _check_valid(r, len(x), 5, 8)
    best = min(results, key=lambda r: r.loss)
    assert adjusted_rand_score(truth, best.labels) == 1.0
    assert best.n_empty == 0
    # the centroids are the blob means (a Lloyd fixed point on all points)
    for j in range(5):
        np.testing.assert_allclose(best.centroids[j], x[best.labels == j].mean(axis=0), atol=1e-4)


def test_two_blobs_recovered_for_any_seed() -> None:
    x, truth = _blobs(k=2, per_blob=100)
    for seed in range(3):
        assert adjusted_rand_score(truth, kmeans(x, 2, seed=seed).labels) == 1.0


def test_same_seed_gives_identical_result() -> None:
    x = np.random.default_rng(1).standard_normal((400, 16)).astype(np.float32)
    a = kmeans(x, 12, n_iter=10, seed=3)
    b = kmeans(x, 12, n_iter=10, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.losses == b.losses


def test_different_seeds_work_and_change_the_init() -> None:
    x = np.random.default_rng(2).standard_normal((300, 8)).astype(np.float32)
    results = [kmeans(x, 10, n_iter=5, seed=s) for s in range(4)]
    for r in results:
        _check_valid(r, 300, 10, 8)
    # on structureless data different random inits end in different local minima
    assert any(not np.array_equal(results[0].centroids, r.centroids) for r in results[1:])


def test_losses_non_increasing_and_loss_is_sum_of_squares() -> None:
    x = np.random.default_rng(3).standard_normal((600, 8)).astype(np.float32)
    r = kmeans(x, 10, n_iter=15, seed=0)
    assert 2 <= len(r.losses) <= 15
    assert r.loss == r.losses[-1]
    diffs = np.diff(r.losses)
    assert (diffs <= 1e-5 * r.losses[0]).all()  # Lloyd never increases the objective (float tolerance)
    assert r.losses[-1] < r.losses[0]
    # obj[-1] is the assignment cost before the last centroid update, so the final cost is at most that,
    # and it is a sum over points (not a mean): same order as the total squared distance.
    _, dists = assign(x, r.centroids)
    assert dists.sum() <= r.loss * (1 + 1e-5)
    assert dists.sum() > 0.9 * r.loss


def test_no_subsampling_by_default() -> None:
    # 600 points, k=2: faiss's own default (256 per centroid) would subsample to 512 points.
    x, _ = _blobs(k=2, per_blob=300, spread=1.0, seed=4)
    full = kmeans(x, 2, n_iter=30)
    for j in range(2):  # trained on every point: centroids are the means of their members
        np.testing.assert_allclose(full.centroids[j], x[full.labels == j].mean(axis=0), atol=1e-4)
    sub = kmeans(x, 2, n_iter=30, max_points_per_centroid=20)  # trains on 40 points only
    gaps = [np.abs(sub.centroids[j] - x[sub.labels == j].mean(axis=0)).max() for j in range(2)]
    assert max(gaps) > 1e-2


def test_fill_empty_clusters_splits_the_largest_clusters() -> None:
    rng = np.random.default_rng(5)
    d = 4
    sub_centers = {name: rng.standard_normal(d) * 20 for name in ("a1", "a2", "b1", "b2", "c")}
    sizes = {"a1": 6, "a2": 6, "b1": 4, "b2": 4, "c": 3}
    parts, names = [], []
    for name, size in sizes.items():
        parts.append(sub_centers[name] + rng.standard_normal((size, d)) * 0.1)
        names += [name] * size
    x = np.concatenate(parts).astype(np.float32)
    names_arr = np.array(names)
    # ids 0 (a1+a2, 12 points), 2 (b1+b2, 8 points), 4 (c, 3 points); ids 1 and 3 empty
    labels = np.select([np.char.startswith(names_arr, "a"), np.char.startswith(names_arr, "b")], [0, 2], 4)
    centroids = np.zeros((5, d), dtype=np.float32)
    for j in (0, 2, 4):
        centroids[j] = x[labels == j].mean(axis=0)
    new_labels, new_centroids, n_empty = fill_empty_clusters(x, labels, centroids, seed=0)
    assert n_empty == 2
    assert np.bincount(new_labels, minlength=5).min() >= 1
    # empty id 1 split the largest cluster 0 along its two sub-blobs; then cluster 2 (8 points) was the
    # largest and id 3 split it; the small cluster 4 is untouched
    assert {frozenset(new_labels[names_arr == s]) for s in ("a1", "a2")} == {frozenset({0}), frozenset({1})}
    assert {frozenset(new_labels[names_arr == s]) for s in ("b1", "b2")} == {frozenset({2}), frozenset({3})}
    np.testing.assert_array_equal(new_labels[names_arr == "c"], 4)
    for j in range(5):
        np.testing.assert_allclose(new_centroids[j], x[new_labels == j].mean(axis=0), atol=1e-5)
    np.testing.assert_array_equal(labels[labels == 4], 4)  # inputs not modified
    again = fill_empty_clusters(x, labels, centroids, seed=0)
    np.testing.assert_array_equal(again[0], new_labels)


def test_fill_splits_identical_points_in_half_and_leaves_full_labels_alone() -> None:
    x = np.ones((6, 3), dtype=np.float32)  # 2-means degenerates: fallback half split
    labels, cents, n_empty = fill_empty_clusters(x, np.zeros(6, dtype=np.int64), np.ones((2, 3)), seed=0)
    assert n_empty == 1
    np.testing.assert_array_equal(np.bincount(labels), [3, 3])
    full = np.array([0, 1, 1, 0, 1, 0])
    same, _, n_none = fill_empty_clusters(x, full, np.ones((2, 3)), seed=0)
    assert n_none == 0
    np.testing.assert_array_equal(same, full)


def test_fill_raises_when_k_exceeds_points() -> None:
    x = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"k=3 must be <= the number of images \(2\)"):
        fill_empty_clusters(x, np.array([0, 1]), np.zeros((3, 2), dtype=np.float32))


def test_kmeans_with_duplicates_leaves_no_empty_cluster() -> None:
    distinct = np.random.default_rng(6).standard_normal((10, 4)).astype(np.float32)
    x = np.repeat(distinct, 2, axis=0)  # 20 points, 10 distinct
    r = kmeans(x, 15, n_iter=10, seed=0)
    _check_valid(r, 20, 15, 4)
    # duplicates share a nearest centroid, so at most 10 clusters are non-empty before filling
    assert r.n_empty >= 5
    assert np.isfinite(r.centroids).all()


def test_k_equal_to_n_gives_singletons() -> None:
    x = np.random.default_rng(7).standard_normal((12, 3)).astype(np.float32)
    r = kmeans(x, 12, n_iter=5)
    np.testing.assert_array_equal(np.bincount(r.labels), np.ones(12, dtype=np.int64))


def test_invalid_arguments() -> None:
    x = np.random.default_rng(8).standard_normal((300, 4)).astype(np.float32)
    expected = r"k=500 is larger than the number of images \(300\); use --k 300 or less"
    with pytest.raises(ValueError, match=expected):
        kmeans(x, 500)
    with pytest.raises(ValueError, match="k=0"):
        kmeans(x, 0)
    with pytest.raises(ValueError, match="kmeans_iters=0"):
        kmeans(x, 3, n_iter=0)
    bad = x.copy()
    bad[10, 2] = np.nan
    with pytest.raises(ValueError, match="in 1 of 300 rows"):
        kmeans(bad, 3)
    with pytest.raises(ValueError, match="2-D array"):
        kmeans(x[:, 0], 3)


def test_n_threads_is_restored() -> None:
    before = faiss.omp_get_max_threads()
    x, truth = _blobs(k=2, per_blob=50)
    r = kmeans(x, 2, n_threads=1)
    assert adjusted_rand_score(truth, r.labels) == 1.0
    assert faiss.omp_get_max_threads() == before


def test_assign_matches_brute_force() -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((70_000, 8)).astype(np.float32)  # more rows than one search batch
    centroids = rng.standard_normal((16, 8)).astype(np.float32)
    labels, dists = assign(x, centroids)
    brute = ((x[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(axis=2)
    np.testing.assert_array_equal(labels, brute.argmin(axis=1))
    np.testing.assert_allclose(dists, brute.min(axis=1), rtol=1e-4, atol=1e-5)
    assert labels.dtype == np.int64 and dists.dtype == np.float32
    with pytest.raises(ValueError, match="centroids have dimension 3 but features have dimension 8"):
        assign(x[:5], centroids[:, :3])
