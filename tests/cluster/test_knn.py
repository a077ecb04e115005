import numpy as np
import pytest

from deepcluster.cluster.knn import weighted_knn_accuracy, weighted_knn_predict


def test_weighted_vote_by_hand():
    # memory: two near the query with class 1, three farther with class 0
    memory = np.array([[1.0, 0.1], [1.0, 0.12], [0.0, 1.0], [0.1, 1.0], [0.2, 1.0]])
    labels = np.array([1, 1, 0, 0, 0])
    query = np.array([[1.0, 0.0]])
    # k=5, T=0.07: the two close neighbours' exp(sim/T) dwarf the three far ones
    assert weighted_knn_predict(memory, labels, query, k=5, temperature=0.07)[0] == 1
    # with a huge temperature votes are nearly equal: majority class 0 wins
    assert weighted_knn_predict(memory, labels, query, k=5, temperature=1e6)[0] == 0


def test_leave_one_out_excludes_self():
    memory = np.array([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])
    labels = np.array([0, 1, 1])
    # with itself in the vote item 0 would be right; without it, its only neighbours are class 1
    assert weighted_knn_predict(memory, labels, k=1)[0] == 1
    assert weighted_knn_accuracy(memory, labels, k=1) == pytest.approx(2 / 3)


def test_separable_clusters_give_full_accuracy_and_chunks_agree():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 5
    labels = np.repeat(np.arange(4), 50)
    feats = centers[labels] + rng.normal(size=(200, 16))
    assert weighted_knn_accuracy(feats, labels, k=20) == 1.0
    a = weighted_knn_predict(feats, labels, k=20, chunk_size=7)
    b = weighted_knn_predict(feats, labels, k=20, chunk_size=1000)
    assert np.array_equal(a, b)
