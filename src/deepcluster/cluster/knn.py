"""Weighted k-nearest-neighbour classification on L2-normalised frozen features (cosine similarity)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _normalize(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return torch.nn.functional.normalize(t, dim=1)


def _predict_many_k(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray | None,
    ks: Sequence[int],
    temperature: float,
    n_classes: int | None,
    chunk_size: int,
) -> dict[int, np.ndarray]:
    """Predictions for every k in ``ks`` from one top-max(k) similarity search per query chunk."""
    if not ks:
        raise ValueError("give at least one k")
    if any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise ValueError(f"every k must be a positive integer, got {list(ks)}")
    memory = _normalize(train_features)
    labels = torch.as_tensor(np.asarray(train_labels, dtype=np.int64))
    if memory.shape[0] != labels.shape[0]:
        raise ValueError("train_features and train_labels must have the same number of rows")
    leave_one_out = query_features is None
    queries = memory if leave_one_out else _normalize(query_features)
    n_classes = int(n_classes or labels.max().item() + 1)
    available = memory.shape[0] - (1 if leave_one_out else 0)
    if available < 1:
        raise ValueError("k-NN needs at least one memory item besides the query")
    k_eff = {int(k): min(int(k), available) for k in ks}
    k_max = max(k_eff.values())
    predictions: dict[int, list[torch.Tensor]] = {k: [] for k in k_eff}
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size]
        similarity = block @ memory.T
        if leave_one_out:
            rows = torch.arange(block.shape[0])
            similarity[rows, rows + start] = -float("inf")
        top_sim, top_idx = similarity.topk(k_max, dim=1)
        weights = (top_sim / temperature).exp()
        top_labels = labels[top_idx]
        for k, k_used in k_eff.items():
            votes = torch.zeros(block.shape[0], n_classes)
            votes.scatter_add_(1, top_labels[:, :k_used], weights[:, :k_used])
            predictions[k].append(votes.argmax(dim=1))
    return {k: torch.cat(parts).numpy() for k, parts in predictions.items()}


def weighted_knn_predict(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray | None = None,
    k: int = 20,
    temperature: float = 0.07,
    n_classes: int | None = None,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Predicted class of each query: the k most cosine-similar memory items vote with weight exp(sim / T).

    With `query_features=None` the memory is queried with itself, leaving each item out of its own vote
    (leave-one-out).
    """
    return _predict_many_k(
        train_features, train_labels, query_features, (k,), temperature, n_classes, chunk_size
    )[int(k)]


def weighted_knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray | None = None,
    query_labels: np.ndarray | None = None,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of `weighted_knn_predict`; leave-one-out over the memory when no queries are given."""
    return weighted_knn_accuracies(
        train_features, train_labels, query_features, query_labels, ks=(k,), temperature=temperature
    )[int(k)]


def weighted_knn_accuracies(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray | None = None,
    query_labels: np.ndarray | None = None,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
    n_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """``{k: top-1 accuracy}`` of the weighted k-NN classifier for several k at once.

    One similarity search keeps the top max(k) neighbours, and each k votes with the first k of them (k larger
    than the memory is clipped to it). Leave-one-out over the memory when no queries are given.
    """
    if query_features is not None and query_labels is None:
        raise ValueError("query_labels are needed to score query_features")
    truth = np.asarray(train_labels if query_features is None else query_labels)
    predicted = _predict_many_k(
        train_features, train_labels, query_features, ks, temperature, n_classes, chunk_size
    )
    if len(truth) != len(next(iter(predicted.values()))):
        raise ValueError("query_features and query_labels must have the same number of rows")
    return {k: float((pred == truth).mean()) for k, pred in predicted.items()}
