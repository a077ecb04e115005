"""Equal-size labels from class probabilities: SeLa's optimal transport, solved with Sinkhorn-Knopp.

Given log-probabilities log P (N x K), find Q in the transportation polytope (rows sum to 1/N, columns to 1/K)
minimising <Q, -log P> - H(Q) / lambda. The solution is Q = diag(alpha) P^lambda diag(beta); Sinkhorn-Knopp
finds the scalings by alternating row and column normalisation. Labels are argmax_k Q[i, k].

Everything runs in float64 in the log domain (log alpha, log beta, lambda * log P), so neither a near one-hot P nor a
large lambda over- or underflows. P is read in chunks of rows, converted to float64 on the fly: the working memory is
about six chunks of `chunk_rows x K` float64 (the copy, the scaled scores, logsumexp's temporaries) plus a few vectors
of N, whatever the size of P (which may be a memory-mapped array on disk). When the whole float64 lambda * log P fits
a budget (`resident_mb`; `resident_budget_mb` gives half the free memory of a CUDA device), every chunk is read and
converted once and kept on the device for all iterations instead: the same chunks, so the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

TIE_BREAK_SCALE = 1e-9
"""Seeded noise added to the final scores so exact ties (e.g. a network whose outputs are all equal) are broken at
random instead of all going to cluster 0; far below any real difference between scores."""


@dataclass
class SinkhornResult:
    """Labels and how the solver got there."""

    labels: np.ndarray
    """int64 [N], argmax over clusters of the scaled matrix."""
    log_beta: np.ndarray
    """float64 [K], the log column scaling at the end."""
    iterations: int
    error: float
    """Last measured change of the column scaling, sum_k |beta_old / beta_new - 1|."""
    converged: bool
    cross_entropy: float
    """Mean -log P[i, label_i]: the self-labelling objective of the hard labels."""


CPU_RESIDENT_MB = 256.0
"""On the CPU, a float64 lambda * log P up to this size is kept in memory for all iterations (a few chunks)."""


def default_chunk_rows(n_clusters: int, chunk_mb: float = 64.0) -> int:
    """Rows per chunk so that one float64 chunk of K columns takes about `chunk_mb` megabytes."""
    return max(1, int(chunk_mb * 1e6 // (8 * n_clusters)))


def resident_budget_mb(device: str | torch.device) -> float:
    """Megabytes of a resident P that `device` can hold: on CUDA, half of what is free there (the driver's free
    memory plus what torch's allocator holds unused); on the CPU, `CPU_RESIDENT_MB`."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_RESIDENT_MB
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return (free + cached) / 2e6


def _check_input(
    log_probs: np.ndarray | torch.Tensor, lam: float, tolerance: float, check_every: int
) -> None:
    if log_probs.ndim != 2 or log_probs.shape[0] < 1 or log_probs.shape[1] < 2:
        raise ValueError(
            f"sinkhorn: expected log-probabilities of shape [N, K] with N >= 1, K >= 2; got {tuple(log_probs.shape)}"
        )
    if not lam > 0 or not math.isfinite(lam):
        raise ValueError(f"sinkhorn: lambda={lam!r} must be a finite number > 0")
    if not tolerance > 0:
        raise ValueError(f"sinkhorn: tolerance={tolerance!r} must be > 0")
    if check_every < 1:
        raise ValueError(f"sinkhorn: check_every={check_every!r} must be >= 1")


class _Chunks:
    """Row chunks of lambda * log P as float64 tensors on the device; all kept resident when there is only one or
    when the whole of them takes at most `resident_mb` megabytes, else read again at every pass."""

    def __init__(
        self,
        log_probs: np.ndarray | torch.Tensor,
        lam: float,
        chunk_rows: int,
        device: torch.device,
        resident_mb: float | None,
    ):
        self.source = log_probs
        self.lam = lam
        self.device = device
        n, k = log_probs.shape
        self.bounds = [(start, min(n, start + chunk_rows)) for start in range(0, n, chunk_rows)]
        fits = resident_mb is not None and 8 * n * k / 1e6 <= resident_mb
        self.resident = [self._load(*b) for b in self.bounds] if fits or len(self.bounds) == 1 else None

    def _load(self, start: int, stop: int) -> torch.Tensor:
        block = self.source[start:stop]
        if isinstance(block, np.ndarray):  # a float64 copy: also right for read-only memory maps
            block = torch.from_numpy(np.array(block, dtype=np.float64))
        scores = block.to(self.device, torch.float64) * self.lam
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(
                f"sinkhorn: rows {start}..{stop - 1} of the log-probabilities are NaN or infinite; "
                "pass log_softmax outputs (finite), not probabilities with zeros"
            )
        return scores

    def __iter__(self):
        for i, (start, stop) in enumerate(self.bounds):
            yield start, stop, (self.resident[i] if self.resident is not None else self._load(start, stop))


def sinkhorn_labels(
    log_probs: np.ndarray | torch.Tensor,
    lam: float,
    tolerance: float = 0.1,
    check_every: int = 10,
    max_iters: int = 1000,
    chunk_rows: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    resident_mb: float | None = None,
) -> SinkhornResult:
    """Equal-partition labels for N samples over K clusters from their log-probabilities `log_probs` [N, K].

    Alternates the row scaling (each sample's mass 1/N) and the column scaling (each cluster's mass 1/K) of
    P^lam until the column scaling changes by less than `tolerance` (sum over clusters of |beta_old/beta_new - 1|,
    measured every `check_every` iterations) or `max_iters` is reached. `chunk_rows` bounds the memory (default:
    64 MB of float64 per chunk); the result does not depend on it beyond float rounding. When the float64
    lambda * log P takes at most `resident_mb` megabytes, its chunks are read once and kept on `device` (None: only a
    single chunk is); the result is the same either way. The same input and seed give the same labels.
    """
    _check_input(log_probs, lam, tolerance, check_every)
    n, k = (int(s) for s in log_probs.shape)
    device = torch.device(device)
    chunks = _Chunks(log_probs, float(lam), chunk_rows or default_chunk_rows(k), device, resident_mb)
    log_n, log_k = math.log(n), math.log(k)
    log_beta = torch.zeros(k, dtype=torch.float64, device=device)
    error, iterations, converged = math.inf, 0, False
    while iterations < max_iters:
        # One pass: each chunk's row scaling from the current beta, then its share of the next column sums.
        column_lse = torch.full((k,), -math.inf, dtype=torch.float64, device=device)
        for _, _, scores in chunks:
            shifted = scores + log_beta
            log_alpha = -log_n - torch.logsumexp(shifted, dim=1, keepdim=True)
            column_lse = torch.logaddexp(column_lse, torch.logsumexp(shifted + log_alpha, dim=0))
        new_log_beta = -log_k - (column_lse - log_beta)
        iterations += 1
        if iterations % check_every == 0:
            error = float(torch.sum(torch.abs(torch.expm1(log_beta - new_log_beta))))
            if error < tolerance:
                converged = True
        log_beta = new_log_beta
        if converged:
            break
    labels = np.empty(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    picked_sum = 0.0
    for start, stop, scores in chunks:
        noise = torch.as_tensor(rng.random((stop - start, k)), device=device) * TIE_BREAK_SCALE
        best = torch.argmax(scores + log_beta + noise, dim=1)
        picked_sum += float(scores.gather(1, best[:, None]).sum()) / lam
        labels[start:stop] = best.cpu().numpy()
    return SinkhornResult(
        labels=labels,
        log_beta=log_beta.cpu().numpy(),
        iterations=iterations,
        error=error,
        converged=converged,
        cross_entropy=-picked_sum / n,
    )


def balanced_random_labels(n: int, k: int, seed: int) -> np.ndarray:
    """A random assignment of n samples to k clusters whose sizes differ by at most one (SeLa's start)."""
    if n < k:
        raise ValueError(f"balanced_random_labels: {n} samples cannot fill {k} clusters")
    rng = np.random.default_rng(seed)
    return (rng.permutation(n) % k).astype(np.int64)
