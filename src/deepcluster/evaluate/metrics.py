"""Clustering metrics against true labels and between two labellings."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def nmi(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Normalised mutual information (arithmetic normalisation, as scikit-learn's default)."""
    return float(normalized_mutual_info_score(np.asarray(labels_a), np.asarray(labels_b)))


def ari(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted Rand index."""
    return float(adjusted_rand_score(np.asarray(labels_a), np.asarray(labels_b)))
