import numpy as np
import pytest

from deepcluster.data.samplers import uniform_cluster_sample


def test_every_cluster_drawn_equally_often_despite_imbalance():
    labels = np.array([0] * 500 + [1] * 20 + [2] * 3 + [5] * 77)  # ids 3 and 4 are empty
    draws = uniform_cluster_sample(labels, n_samples=1000, seed=0)
    assert draws.shape == (1000,)
    counts = np.bincount(labels[draws], minlength=6)
    assert counts[3] == counts[4] == 0
    used = counts[[0, 1, 2, 5]]
    assert used.sum() == 1000
    assert used.min() == 250 and used.max() == 250


def test_remainder_spread_one_extra_draw_per_cluster():
    labels = np.repeat(np.arange(7), [10, 1, 2, 30, 4, 5, 6])
    counts = np.bincount(labels[uniform_cluster_sample(labels, n_samples=100, seed=3)], minlength=7)
    assert counts.sum() == 100
    assert set(counts.tolist()) <= {14, 15}
    assert (counts == 15).sum() == 100 % 7


def test_images_within_a_cluster_drawn_uniformly_without_replacement():
    labels = np.array([0] * 10 + [1] * 40)
    draws = uniform_cluster_sample(labels, n_samples=80, seed=1)
    per_image = np.bincount(draws, minlength=50)
    # cluster 0 (10 images) gets 40 draws: every image exactly 4 times (whole permutations)
    assert (per_image[:10] == 4).all()
    # cluster 1 (40 images) gets 40 draws: each image exactly once
    assert (per_image[10:] == 1).all()


def test_same_seed_same_order_other_seed_other_order():
    labels = np.random.default_rng(0).integers(0, 10, size=300)
    a = uniform_cluster_sample(labels, 300, seed=5)
    b = uniform_cluster_sample(labels, 300, seed=5)
    c = uniform_cluster_sample(labels, 300, seed=6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_rejects_empty_or_bad_size():
    with pytest.raises(ValueError):
        uniform_cluster_sample(np.array([], dtype=np.int64), 10, seed=0)
    with pytest.raises(ValueError):
        uniform_cluster_sample(np.array([0, 1]), 0, seed=0)
