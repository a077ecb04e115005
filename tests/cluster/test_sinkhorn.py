"""SeLa's Sinkhorn-Knopp labelling: marginals, chunking, extreme inputs, determinism, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepcluster.cluster import sinkhorn
from deepcluster.cluster.sinkhorn import balanced_random_labels, sinkhorn_labels


def random_log_probs(n: int, k: int, scale: float, seed: int) -> np.ndarray:
    logits = torch.as_tensor(np.random.default_rng(seed).normal(size=(n, k)) * scale)
    return torch.log_softmax(logits, dim=1).numpy().astype(np.float32)


def transport_plan(log_probs: np.ndarray, lam: float, log_beta: np.ndarray) -> np.ndarray:
    """Q = diag(alpha) P^lam diag(beta) with alpha normalising the rows to 1/N, as the solver defines it."""
    scores = lam * log_probs.astype(np.float64) + log_beta
    log_alpha = -math.log(len(scores)) - torch.logsumexp(torch.as_tensor(scores), dim=1).numpy()[:, None]
    return np.exp(scores + log_alpha)


@pytest.mark.parametrize("lam", [10.0, 25.0])
def test_the_plan_has_the_required_marginals(lam: float) -> None:
    n, k = 2000, 40
    log_probs = random_log_probs(n, k, scale=2.0, seed=0)
    result = sinkhorn_labels(log_probs, lam, tolerance=1e-6, max_iters=5000)
    assert result.converged
    plan = transport_plan(log_probs, lam, result.log_beta)
    np.testing.assert_allclose(plan.sum(axis=1), 1 / n, rtol=1e-9)
    np.testing.assert_allclose(plan.sum(axis=0), 1 / k, rtol=1e-5)
    sizes = np.bincount(result.labels, minlength=k)
    assert sizes.min() >= 0.5 * n / k and sizes.max() <= 1.5 * n / k


def test_the_default_tolerance_stops_with_nearly_equal_columns() -> None:
    n, k = 3000, 30
    log_probs = random_log_probs(n, k, scale=3.0, seed=1)
    result = sinkhorn_labels(log_probs, 25.0)
    assert result.converged and result.error < 0.1 and result.iterations % 10 == 0
    column_mass = transport_plan(log_probs, 25.0, result.log_beta).sum(axis=0) * k
    assert np.abs(column_mass - 1).sum() < 0.2


def test_equal_partition_undoes_a_skewed_prediction() -> None:
    """Every row prefers cluster 0 a little: argmax of P would put everyone there, Sinkhorn spreads them."""
    n, k = 1000, 10
    logits = np.random.default_rng(2).normal(size=(n, k))
    logits[:, 0] += 3.0
    log_probs = torch.log_softmax(torch.as_tensor(logits), dim=1).numpy()
    assert np.bincount(log_probs.argmax(1), minlength=k)[0] > 0.8 * n
    sizes = np.bincount(sinkhorn_labels(log_probs, 10.0).labels, minlength=k)
    assert sizes.max() < 0.2 * n and sizes.min() > 0.05 * n


def test_chunked_equals_unchunked() -> None:
    log_probs = random_log_probs(1500, 25, scale=2.0, seed=3)
    whole = sinkhorn_labels(log_probs, 25.0, chunk_rows=10_000)
    for rows in (13, 97, 512):
        chunked = sinkhorn_labels(log_probs, 25.0, chunk_rows=rows)
        assert np.array_equal(chunked.labels, whole.labels)
        assert chunked.iterations == whole.iterations
        np.testing.assert_allclose(chunked.log_beta, whole.log_beta, rtol=1e-9, atol=1e-9)


def test_resident_chunks_are_read_once_and_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    log_probs = random_log_probs(1200, 20, scale=2.0, seed=8)
    loads: list[int] = []
    original = sinkhorn._Chunks._load

    def counted(self, start: int, stop: int) -> torch.Tensor:
        loads.append(start)
        return original(self, start, stop)

    monkeypatch.setattr(sinkhorn._Chunks, "_load", counted)
    whole_mb = log_probs.size * 8 / 1e6
    chunked = sinkhorn_labels(log_probs, 25.0, chunk_rows=100, seed=2)
    chunked_loads = len(loads)
    loads.clear()
    too_small = sinkhorn_labels(log_probs, 25.0, chunk_rows=100, seed=2, resident_mb=whole_mb / 2)
    too_small_loads = len(loads)
    loads.clear()
    resident = sinkhorn_labels(log_probs, 25.0, chunk_rows=100, seed=2, resident_mb=whole_mb)
    assert len(loads) == 12  # each of the 12 chunks once
    assert chunked_loads == too_small_loads == 12 * (chunked.iterations + 1)  # every pass, then the labels
    for other in (resident, too_small):
        np.testing.assert_array_equal(other.labels, chunked.labels)
        np.testing.assert_array_equal(other.log_beta, chunked.log_beta)
        assert other.iterations == chunked.iterations and other.cross_entropy == chunked.cross_entropy


def test_the_cpu_resident_budget_is_the_fixed_one() -> None:
    assert sinkhorn.resident_budget_mb("cpu") == sinkhorn.CPU_RESIDENT_MB > 0


def near_one_hot(n: int, k: int) -> np.ndarray:
    logits = np.random.default_rng(4).normal(size=(n, k))
    logits[:, 0] += 80.0  # float32 softmax would round the others to 0; log-softmax keeps them finite
    return torch.log_softmax(torch.as_tensor(logits, dtype=torch.float32), dim=1).numpy()


def near_uniform(n: int, k: int) -> np.ndarray:
    noise = np.random.default_rng(5).normal(size=(n, k)) * 1e-6
    return (np.full((n, k), -math.log(k)) + noise).astype(np.float32)


@pytest.mark.parametrize(
    "make, lam",
    [(near_one_hot, 25.0), (near_uniform, 25.0), (lambda n, k: random_log_probs(n, k, 3.0, 6), 1e4)],
    ids=["near-one-hot", "near-uniform", "lambda-1e4"],
)
def test_extreme_inputs_give_finite_balanced_labels(make, lam: float) -> None:
    n, k = 2000, 20
    result = sinkhorn_labels(make(n, k), lam, max_iters=300)
    assert np.isfinite(result.log_beta).all() and math.isfinite(result.cross_entropy)
    sizes = np.bincount(result.labels, minlength=k)
    assert result.labels.min() >= 0 and result.labels.max() < k
    assert sizes.min() >= 0.5 * n / k and sizes.max() <= 1.5 * n / k, sizes


def test_identical_rows_are_split_at_random_by_the_seed() -> None:
    """A collapsed network (all outputs equal) must not put every image in cluster 0."""
    log_probs = np.full((600, 6), -math.log(6), dtype=np.float32)
    first = sinkhorn_labels(log_probs, 25.0, seed=0).labels
    assert np.array_equal(first, sinkhorn_labels(log_probs, 25.0, seed=0).labels)
    assert not np.array_equal(first, sinkhorn_labels(log_probs, 25.0, seed=1).labels)
    assert np.bincount(first, minlength=6).min() > 60


def test_the_same_input_and_seed_give_the_same_labels() -> None:
    log_probs = random_log_probs(800, 16, scale=1.0, seed=7)
    a = sinkhorn_labels(log_probs, 10.0, seed=3)
    b = sinkhorn_labels(torch.as_tensor(log_probs), 10.0, seed=3)
    assert np.array_equal(a.labels, b.labels)
    assert a.labels.dtype == np.int64


def test_cross_entropy_is_that_of_the_hard_labels() -> None:
    log_probs = random_log_probs(500, 8, scale=2.0, seed=8)
    result = sinkhorn_labels(log_probs, 10.0)
    expected = -log_probs[np.arange(500), result.labels].astype(np.float64).mean()
    assert result.cross_entropy == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "array, lam, fragment",
    [
        (np.zeros((5,)), 10.0, "shape [N, K]"),
        (np.zeros((5, 1)), 10.0, "shape [N, K]"),
        (np.zeros((5, 3)), 0.0, "lambda"),
        (np.array([[0.0, -np.inf], [-0.7, -0.7]]), 10.0, "rows 0..1"),
    ],
)
def test_bad_input_is_named(array: np.ndarray, lam: float, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        sinkhorn_labels(array, lam)


def test_balanced_random_labels_differ_in_size_by_at_most_one() -> None:
    labels = balanced_random_labels(103, 10, seed=0)
    sizes = np.bincount(labels, minlength=10)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 103
    assert not np.array_equal(labels, balanced_random_labels(103, 10, seed=1))
    with pytest.raises(ValueError, match="cannot fill"):
        balanced_random_labels(5, 10, seed=0)
