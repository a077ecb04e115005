"""Weighted k-nearest-neighbour classification on L2-normalised frozen features (cosine similarity)."""

from __future__ import annotations

import numpy as np
import torch


def _normalize(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return torch.nn.functional.normalize(t, dim=1)


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
    memory = _normalize(train_features)
    labels = torch.as_tensor(np.asarray(train_labels, dtype=np.int64))
    if memory.shape[0] != labels.shape[0]:
        raise ValueError("train_features and train_labels must have the same number of rows")
    leave_one_out = query_features is None
    queries = memory if leave_one_out else _normalize(query_features)
    n_classes = int(n_classes or labels.max().item() + 1)
    k_eff = min(k, memory.shape[0] - (1 if leave_one_out else 0))
    if k_eff < 1:
        raise ValueError("k-NN needs at least one memory item besides the query")
    predictions = []
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size]
        similarity = block @ memory.T
        if leave_one_out:
            rows = torch.arange(block.shape[0])
            similarity[rows, rows + start] = -float("inf")
        top_sim, top_idx = similarity.topk(k_eff, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(block.shape[0], n_classes)
        votes.scatter_add_(1, labels[top_idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions).numpy()


def weighted_knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray | None = None,
    query_labels: np.ndarray | None = None,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of `weighted_knn_predict`; leave-one-out over the memory when no queries are given."""
    predicted = weighted_knn_predict(
        train_features, train_labels, query_features, k=k, temperature=temperature
    )
    truth = np.asarray(train_labels if query_features is None else query_labels)
    return float((predicted == truth).mean())
