import numpy as np
import pytest

from deepcluster.cluster.knn import weighted_knn_accuracies, weighted_knn_accuracy, weighted_knn_predict
from synthetic import weighted_knn_reference


def test_several_k_by_hand():
    memory = np.array([[1.0, 0.1], [1.0, 0.12], [0.0, 1.0], [0.1, 1.0], [0.2, 1.0]])
    labels = np.array([1, 1, 0, 0, 0])
    query, truth = np.array([[1.0, 0.0]]), np.array([1])
    # near-equal votes (huge T): the 2 nearest are class 1, the 5 nearest are mostly class 0
    result = weighted_knn_accuracies(memory, labels, query, truth, ks=(2, 5), temperature=1e6)
    assert result == {2: 1.0, 5: 0.0}


def test_matches_a_brute_force_reference_with_queries_and_leave_one_out():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8))
    train_labels = rng.integers(0, 3, size=120)
    train = centers[train_labels] + rng.normal(size=(120, 8)) * 1.5
    query_labels = rng.integers(0, 3, size=50)
    queries = centers[query_labels] + rng.normal(size=(50, 8)) * 1.5
    ks = (1, 7, 20, 200)  # 200 exceeds the memory: clipped to it
    many = weighted_knn_accuracies(train, train_labels, queries, query_labels, ks=ks, chunk_size=16)
    loo = weighted_knn_accuracies(train, train_labels, ks=ks)
    for k in ks:  # the brute-force NumPy classifier written from the definition (tests/synthetic.py)
        assert many[k] == weighted_knn_reference(train, train_labels, queries, query_labels, k=k)
        assert loo[k] == weighted_knn_reference(train, train_labels, k=k)
        assert many[k] == weighted_knn_accuracy(train, train_labels, queries, query_labels, k=k)
        predicted = weighted_knn_predict(train, train_labels, queries, k=k)
        assert many[k] == float((predicted == query_labels).mean())


def test_default_ks_and_errors():
    rng = np.random.default_rng(2)
    feats, labels = rng.normal(size=(30, 4)), rng.integers(0, 2, size=30)
    assert sorted(weighted_knn_accuracies(feats, labels)) == [20, 200]
    with pytest.raises(ValueError, match="query_labels"):
        weighted_knn_accuracies(feats, labels, feats[:5])
    with pytest.raises(ValueError, match="positive integer"):
        weighted_knn_accuracies(feats, labels, ks=(0, 5))
