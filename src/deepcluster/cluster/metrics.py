"""Clustering metrics against true labels and between two labellings.

Every function takes two 1-D label arrays of the same, non-zero length. Labels may be any hashable values
(ids need not be ``0..k-1`` nor contiguous); clusters that are never used simply do not count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment


def _sklearn_metrics() -> Any:
    """scikit-learn's metrics, imported on first use: the import takes about 2 s, which every process that
    only trains (e.g. each of torchrun's) would otherwise pay at start-up."""
    import sklearn.metrics

    return sklearn.metrics


def _check_pair(
    labels_a: Any, labels_b: Any, names: tuple[str, str] = ("labels", "true_labels")
) -> tuple[np.ndarray, np.ndarray]:
    """Return both labellings as 1-D arrays; ValueError on empty input, wrong rank or length mismatch."""
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    for name, arr in zip(names, (a, b), strict=True):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array of labels, got shape {arr.shape}")
    if len(a) != len(b):
        raise ValueError(f"{names[0]} and {names[1]} must have the same length, got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty: nothing to evaluate")
    return a, b


def contingency_matrix(labels: Any, true_labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts ``C[i, j]`` of items in the i-th used cluster and j-th present class.

    Returns ``(C, cluster_ids, class_ids)``: the sorted distinct cluster and class values that index the rows
    and columns (clusters never used have no row).
    """
    a, b = _check_pair(labels, true_labels)
    cluster_ids, rows = np.unique(a, return_inverse=True)
    class_ids, cols = np.unique(b, return_inverse=True)
    counts = np.zeros((len(cluster_ids), len(class_ids)), dtype=np.int64)
    np.add.at(counts, (rows.ravel(), cols.ravel()), 1)
    return counts, cluster_ids, class_ids


def nmi(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Normalised mutual information (arithmetic normalisation, as scikit-learn's default)."""
    a, b = _check_pair(labels_a, labels_b, ("labels_a", "labels_b"))
    return float(_sklearn_metrics().normalized_mutual_info_score(a, b))


def adjusted_nmi(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted mutual information (NMI corrected for chance; 0 for random labellings, 1 for identical)."""
    a, b = _check_pair(labels_a, labels_b, ("labels_a", "labels_b"))
    return float(_sklearn_metrics().adjusted_mutual_info_score(a, b))


def ari(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted Rand index."""
    a, b = _check_pair(labels_a, labels_b, ("labels_a", "labels_b"))
    return float(_sklearn_metrics().adjusted_rand_score(a, b))


def hungarian_matching(labels: Any, true_labels: Any) -> dict[Any, Any]:
    """Best one-to-one map ``{cluster: class}`` maximising the number of items whose cluster maps to their class.

    With more clusters than classes some clusters stay unmatched (absent from the dict), and vice versa.
    """
    counts, cluster_ids, class_ids = contingency_matrix(labels, true_labels)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {cluster_ids[r].item(): class_ids[c].item() for r, c in zip(rows, cols, strict=True)}


def hungarian_accuracy(labels: Any, true_labels: Any) -> float:
    """Accuracy under the best one-to-one cluster -> class map; items of unmatched clusters count as wrong."""
    counts, _, _ = contingency_matrix(labels, true_labels)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def majority_accuracy(labels: Any, true_labels: Any) -> float:
    """Accuracy when every cluster predicts its most frequent class (several clusters may share a class)."""
    counts, _, _ = contingency_matrix(labels, true_labels)
    return float(counts.max(axis=1).sum() / counts.sum())


def cluster_table(
    labels: Any,
    true_labels: Any,
    class_names: Sequence[str] | Mapping[Any, str] | None = None,
    n_clusters: int | None = None,
) -> list[dict[str, Any]]:
    """One row per cluster: ``{"cluster", "size", "dominant", "purity"}``, largest first (ties: smaller id).

    ``dominant`` is the cluster's most frequent true label (ties: the smallest), or its name when
    ``class_names`` is given (a sequence indexed by integer labels, or a mapping); ``purity`` is the fraction of
    the cluster holding that label. With ``n_clusters``, ids ``0..n_clusters-1`` never used get a row of size 0
    with ``dominant`` and ``purity`` None. Values are plain Python types (JSON-serialisable).
    """
    counts, cluster_ids, class_ids = contingency_matrix(labels, true_labels)
    rows: list[dict[str, Any]] = []
    for i, cluster in enumerate(cluster_ids):
        size = int(counts[i].sum())
        best = int(counts[i].argmax())
        rows.append(
            {
                "cluster": cluster.item(),
                "size": size,
                "dominant": _class_name(class_ids[best].item(), class_names),
                "purity": float(counts[i, best] / size),
            }
        )
    if n_clusters is not None:
        used = {row["cluster"] for row in rows}
        rows += [
            {"cluster": c, "size": 0, "dominant": None, "purity": None}
            for c in range(n_clusters)
            if c not in used
        ]
    rows.sort(key=lambda row: (-row["size"], _sort_key(row["cluster"])))
    return rows


def _class_name(label: Any, class_names: Sequence[str] | Mapping[Any, str] | None) -> Any:
    if class_names is None:
        return label
    if isinstance(class_names, Mapping):
        return class_names.get(label, label)
    if isinstance(label, (int, np.integer)) and 0 <= label < len(class_names):
        return class_names[label]
    raise ValueError(f"class_names has {len(class_names)} entries; it cannot name true label {label!r}")


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def clustering_report(labels: Any, true_labels: Any) -> dict[str, float | int]:
    """All clustering metrics of ``labels`` against ``true_labels`` in one JSON-serialisable dict.

    Keys: n_samples, n_clusters (used), n_classes, nmi, adjusted_nmi, ari, hungarian_accuracy,
    majority_accuracy.
    """
    counts, cluster_ids, class_ids = contingency_matrix(labels, true_labels)
    a, b = np.asarray(labels), np.asarray(true_labels)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    total = counts.sum()
    return {
        "n_samples": int(total),
        "n_clusters": len(cluster_ids),
        "n_classes": len(class_ids),
        "nmi": float(_sklearn_metrics().normalized_mutual_info_score(b, a)),
        "adjusted_nmi": float(_sklearn_metrics().adjusted_mutual_info_score(b, a)),
        "ari": float(_sklearn_metrics().adjusted_rand_score(b, a)),
        "hungarian_accuracy": float(counts[rows, cols].sum() / total),
        "majority_accuracy": float(counts.max(axis=1).sum() / total),
    }
