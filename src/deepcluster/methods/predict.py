"""Putting new images into a run's clusters: the rules each method's final assignment leaves behind.

A run's last label update (after its last step) keeps what it needs to label any image the way it labelled the
training images (`Assignment.state`, saved as RUN/assigner.pt): centroids and the PCA-whitening for the k-means
methods, the column scaling of the Sinkhorn solution for SeLa. Its labels (labels.csv) are those of the rules
below applied to the trained network's values, so assigning the training images again gives labels.csv.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deepcluster.cluster.preprocess import PCAWhitening


@dataclass
class Prediction:
    """Labels of N images for each of H label sets, with how sure the rule is of each."""

    labels: np.ndarray
    """int64 [N, H]."""
    score: np.ndarray
    """float32 [N, H]: distance, similarity or probability of the label (`score_name`)."""
    runner_up: np.ndarray
    """int64 [N, H]: the second choice."""
    runner_score: np.ndarray
    """float32 [N, H]."""
    score_name: str
    """`distance` (smaller is nearer), `similarity` (cosine) or `probability`."""

    @classmethod
    def from_columns(cls, columns: list[tuple[np.ndarray, ...]], score_name: str) -> Prediction:
        """One Prediction from each label set's (labels, score, runner_up, runner_score), as `top2` gives them."""
        labels, score, runner_up, runner_score = (np.stack([c[i] for c in columns], axis=1) for i in range(4))
        return cls(
            labels=labels.astype(np.int64),
            score=score.astype(np.float32),
            runner_up=runner_up.astype(np.int64),
            runner_score=runner_score.astype(np.float32),
            score_name=score_name,
        )


def pca_state(pca: PCAWhitening) -> dict[str, Any]:
    """What reapplies a fitted PCA-whitening."""
    assert pca.mean is not None and pca.matrix is not None
    return {"pca_dim": pca.dim, "pca_mean": pca.mean, "pca_matrix": pca.matrix, "pca_l2": pca.l2_normalize}


def pca_apply(state: dict[str, Any], values: np.ndarray) -> np.ndarray:
    """`values` whitened by the PCA of `pca_state`."""
    pca = PCAWhitening(dim=int(state["pca_dim"]), l2_normalize=bool(state["pca_l2"]))
    pca.mean, pca.matrix = state["pca_mean"], state["pca_matrix"]
    pca.input_dim = int(state["pca_matrix"].shape[1]) if pca.uses_pca else int(values.shape[1])
    return pca.apply(values)


def top2(scores: np.ndarray, largest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best and second-best column of every row of `scores` [N, K] (ties: the smallest id, as argmax)."""
    signed = scores if largest else -scores
    first = np.argmax(signed, axis=1)
    rows = np.arange(len(scores))
    if scores.shape[1] > 1:
        masked = signed.copy()
        masked[rows, first] = -np.inf
        second = np.argmax(masked, axis=1)
    else:
        second = first
    return first, scores[rows, first], second, scores[rows, second]


def nearest(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, ...]:
    """Nearest and second-nearest centroid (squared L2, float64 for a stable order) of each point."""
    x, c = points.astype(np.float64), centroids.astype(np.float64)
    distances = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    distances[:, np.isnan(c).any(axis=1)] = np.inf  # sub-clusters that never had a point
    return top2(np.maximum(distances, 0.0), largest=False)


def most_similar(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, ...]:
    """Largest and second-largest inner product of each (unit) point with the (unit) centroids."""
    return top2(points.astype(np.float64) @ centroids.astype(np.float64).T, largest=True)


def transport(log_probs: np.ndarray, lam: float, log_beta: np.ndarray) -> tuple[np.ndarray, ...]:
    """The Sinkhorn labels rule: argmax of lam * log p + log beta (the row scaling does not change it); the
    score is the row-normalised transport plan, a probability."""
    logits = lam * log_probs.astype(np.float64) + log_beta[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    plan = np.exp(logits)
    plan /= plan.sum(axis=1, keepdims=True)
    return top2(plan, largest=True)
