import itertools

import numpy as np
import pytest
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

from deepcluster.cluster.metrics import (
    adjusted_nmi,
    ari,
    cluster_table,
    clustering_report,
    contingency_matrix,
    hungarian_accuracy,
    hungarian_matching,
    majority_accuracy,
    nmi,
)

# 3 clusters, 2 classes: cluster 0 = {c0, c0, c1}, cluster 1 = {c1, c1}, cluster 2 = {c1}
LABELS = np.array([0, 0, 0, 1, 1, 2])
TRUE = np.array([0, 0, 1, 1, 1, 1])


def _brute_force_hungarian(labels, true):
    clusters, classes = np.unique(labels), np.unique(true)
    best = 0
    # every injective map from the smaller side into the larger one
    small, large, swap = (
        (clusters, classes, False) if len(clusters) <= len(classes) else (classes, clusters, True)
    )
    for image in itertools.permutations(large, len(small)):
        pairs = [(b, a) if swap else (a, b) for a, b in zip(small, image, strict=True)]
        best = max(best, sum(int(np.sum((labels == c) & (true == t))) for c, t in pairs))
    return best / len(labels)


def test_contingency_by_hand():
    counts, clusters, classes = contingency_matrix(LABELS, TRUE)
    assert counts.tolist() == [[2, 1], [0, 2], [0, 1]]
    assert clusters.tolist() == [0, 1, 2] and classes.tolist() == [0, 1]


def test_more_clusters_than_classes_by_hand():
    # best one-to-one: cluster 0 -> class 0 (2 right), cluster 1 -> class 1 (2 right); cluster 2 unmatched
    assert hungarian_accuracy(LABELS, TRUE) == pytest.approx(4 / 6)
    assert hungarian_matching(LABELS, TRUE) == {0: 0, 1: 1}
    # majority: every cluster takes its dominant class, unmatched ones too: 2 + 2 + 1
    assert majority_accuracy(LABELS, TRUE) == pytest.approx(5 / 6)


def test_fewer_clusters_than_classes_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1])
    true = np.array([0, 0, 1, 1, 2, 2])
    assert hungarian_accuracy(labels, true) == pytest.approx(4 / 6)
    assert majority_accuracy(labels, true) == pytest.approx(4 / 6)


def test_hungarian_matches_brute_force_on_random_cases():
    rng = np.random.default_rng(0)
    for n_clusters, n_classes in [(3, 3), (5, 3), (2, 4), (4, 4)]:
        labels = rng.integers(0, n_clusters, size=40)
        true = rng.integers(0, n_classes, size=40)
        assert hungarian_accuracy(labels, true) == pytest.approx(_brute_force_hungarian(labels, true))


def test_permuted_perfect_clustering_scores_one():
    true = np.repeat(np.arange(4), 5)
    labels = np.array([3, 0, 2, 1])[true]
    assert hungarian_accuracy(labels, true) == 1.0
    assert majority_accuracy(labels, true) == 1.0
    assert nmi(labels, true) == pytest.approx(1.0)
    assert adjusted_nmi(labels, true) == pytest.approx(1.0)


def test_non_contiguous_ids_and_string_classes_give_same_metrics():
    names = np.array(["cat", "dog"])
    relabelled = LABELS * 10 + 7  # ids 7, 17, 27
    assert hungarian_accuracy(relabelled, names[TRUE]) == pytest.approx(4 / 6)
    assert majority_accuracy(relabelled, names[TRUE]) == pytest.approx(5 / 6)
    assert hungarian_matching(relabelled, names[TRUE]) == {7: "cat", 17: "dog"}
    assert nmi(relabelled, TRUE) == pytest.approx(nmi(LABELS, TRUE))


def test_single_cluster():
    labels = np.zeros(6, dtype=int)
    true = np.array([0, 0, 1, 1, 1, 2])
    assert hungarian_accuracy(labels, true) == pytest.approx(3 / 6)
    assert majority_accuracy(labels, true) == pytest.approx(3 / 6)
    assert nmi(labels, true) == pytest.approx(0.0)
    assert adjusted_nmi(labels, true) == pytest.approx(float(adjusted_mutual_info_score(true, labels)))
    table = cluster_table(labels, true)
    assert table == [{"cluster": 0, "size": 6, "dominant": 1, "purity": 0.5}]


def test_sklearn_agreement_on_random_labels():
    rng = np.random.default_rng(1)
    labels, true = rng.integers(0, 7, size=60), rng.integers(0, 3, size=60)
    assert nmi(labels, true) == pytest.approx(normalized_mutual_info_score(true, labels))
    assert adjusted_nmi(labels, true) == pytest.approx(adjusted_mutual_info_score(true, labels))
    assert ari(labels, true) == pytest.approx(adjusted_rand_score(true, labels))


def test_cluster_table_rows_sorted_by_size_with_empty_clusters_and_names():
    table = cluster_table(LABELS, TRUE, class_names=["cat", "dog"], n_clusters=5)
    assert table == [
        {"cluster": 0, "size": 3, "dominant": "cat", "purity": pytest.approx(2 / 3)},
        {"cluster": 1, "size": 2, "dominant": "dog", "purity": 1.0},
        {"cluster": 2, "size": 1, "dominant": "dog", "purity": 1.0},
        {"cluster": 3, "size": 0, "dominant": None, "purity": None},
        {"cluster": 4, "size": 0, "dominant": None, "purity": None},
    ]
    assert all(type(row["cluster"]) is int and type(row["size"]) is int for row in table)
    with pytest.raises(ValueError, match="cannot name true label"):
        cluster_table(LABELS, TRUE + 5, class_names=["cat", "dog"])


def test_clustering_report_collects_every_metric():
    report = clustering_report(LABELS, TRUE)
    assert report == {
        "n_samples": 6,
        "n_clusters": 3,
        "n_classes": 2,
        "nmi": pytest.approx(normalized_mutual_info_score(TRUE, LABELS)),
        "adjusted_nmi": pytest.approx(adjusted_mutual_info_score(TRUE, LABELS)),
        "ari": pytest.approx(adjusted_rand_score(TRUE, LABELS)),
        "hungarian_accuracy": pytest.approx(4 / 6),
        "majority_accuracy": pytest.approx(5 / 6),
    }


@pytest.mark.parametrize(
    "fn", [nmi, adjusted_nmi, ari, hungarian_accuracy, majority_accuracy, cluster_table, clustering_report]
)
def test_length_mismatch_and_empty_input_raise(fn):
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        fn([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
