"""k-means (L2) in PyTorch, so that clustering can run on a CUDA GPU when faiss has no GPU build.

`torch_kmeans` takes and returns the same things as `deepcluster.cluster.kmeans.kmeans` (NumPy in, a
`KMeansResult` with NumPy arrays out) and follows the same algorithm: k random points as initial centroids,
Lloyd iterations whose objective is recorded before each centroid update, empty clusters re-seeded during
training by splitting a large cluster the way faiss's `Clustering` does, a final nearest-centroid assignment,
then `fill_empty_clusters` so that every cluster is non-empty.

The Lloyd loop (`lloyd`) is shared with `deepcluster.cluster.distributed.distributed_kmeans`: it takes a
reduction that sums the per-cluster statistics over processes (none in one process). Per-cluster sums are
accumulated in float64, so the result depends on how the rows are split or summed only at float64 rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from deepcluster.cluster.kmeans import KMeansResult, checked_kmeans_input, fill_empty_clusters
from deepcluster.cluster.pca_torch import full_fp32_matmul

# Relative perturbation that separates the two copies of a split centroid (faiss uses the same value).
_SPLIT_EPS = 1.0 / 1024.0
# Elements of the [batch_rows, k] float32 distance block when batch_rows is not given (64 MiB).
_BATCH_ELEMENTS = 1 << 24

# Sums a float64 tensor in place over every process that holds part of the rows (e.g. dist.all_reduce).
Reduce = Callable[[torch.Tensor], None]


def default_batch_rows(n: int, k: int) -> int:
    """Rows per distance block: the [rows, k] float32 block stays at about 64 MiB, and never exceeds N."""
    return max(1, min(int(n), _BATCH_ELEMENTS // max(int(k), 1)))


def _assign(
    xs: torch.Tensor, x_sq: torch.Tensor, centroids: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row (ties: smallest id) and the objective (sum of squared distances) as a
    float64 scalar tensor on the rows' device."""
    c_sq = (centroids * centroids).sum(dim=1)
    labels = torch.empty(xs.shape[0], dtype=torch.int64, device=xs.device)
    obj = torch.zeros((), dtype=torch.float64, device=xs.device)
    for start in range(0, xs.shape[0], rows):
        stop = start + rows
        # ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change which centroid is nearest, so it is added after.
        scores = torch.addmm(c_sq, xs[start:stop], centroids.T, beta=1.0, alpha=-2.0)
        best, idx = scores.min(dim=1)
        labels[start:stop] = idx
        obj += (best + x_sq[start:stop]).clamp_min_(0.0).sum(dtype=torch.float64)
    return labels, obj


def _cluster_sums(xs: torch.Tensor, labels: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    """Per-cluster sums of the rows [k, d] in float64, computed deterministically on any device.

    Each block of `rows` rows is converted to float64 and added in row order: `index_add_` on CPU, and on
    CUDA `index_put_(accumulate=True)`, which sorts the indices and sums each cluster's rows in order instead
    of using atomic adds. The float64 sums make the result independent of the row split up to float64
    rounding, which the float32 centroids do not see.
    """
    sums = torch.zeros(k, xs.shape[1], dtype=torch.float64, device=xs.device)
    for start in range(0, xs.shape[0], rows):
        stop = start + rows
        block = xs[start:stop].to(torch.float64)
        if xs.device.type == "cpu":
            sums.index_add_(0, labels[start:stop], block)
        else:
            sums.index_put_((labels[start:stop],), block, accumulate=True)
    return sums


def _split_empty_clusters(centroids: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator) -> int:
    """Re-seed every empty cluster (in place, CPU tensors) by splitting a large one, as faiss does.

    For each empty id (ascending) a cluster j is drawn with probability proportional to size - 1; the empty
    cluster gets a copy of centroid j scaled by (1 +/- eps) in alternating coordinates and centroid j the
    opposite scaling, and j's size is shared between the two. Returns the number of splits.
    """
    d = centroids.shape[1]
    sign = torch.ones(d, dtype=centroids.dtype)
    sign[1::2] = -1.0
    empty = torch.nonzero(sizes == 0).flatten().tolist()
    for i in empty:
        # With N >= k and a cluster empty, some cluster holds more than one point, so a weight is > 0.
        weights = (sizes - 1.0).clamp_min(0.0)
        j = int(torch.multinomial(weights, 1, generator=generator))
        base = centroids[j].clone()
        centroids[i] = base * (1.0 + _SPLIT_EPS * sign)
        centroids[j] = base * (1.0 - _SPLIT_EPS * sign)
        sizes[i] = sizes[j] / 2.0
        sizes[j] -= sizes[i]
    return len(empty)


def lloyd(
    xs: torch.Tensor,
    centroids: torch.Tensor,
    n_iter: int,
    generator: torch.Generator,
    batch_rows: int,
    reduce: Reduce | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Lloyd iterations on the float32 rows `xs` [n, d] from the initial `centroids` [k, d].

    Each iteration assigns the rows to their nearest centroid, records the objective, and replaces every
    centroid by the mean of its rows; empty clusters are re-seeded by `_split_empty_clusters` drawing from
    `generator` (a CPU generator). `reduce`, when given, sums a float64 tensor in place over all processes
    that hold part of the rows (they must pass the same centroids and equally seeded generators); each
    iteration calls it once on the per-cluster sums, counts and the objective, so every process updates the
    centroids alike. `xs` may then have no rows. Distances are computed `batch_rows` rows at a time.
    Returns (centroids float32 [k, d], labels int64 of the rows of `xs` from a final assignment, objective of
    every iteration over all rows).
    """
    k, d = centroids.shape
    rows = max(1, int(batch_rows))
    losses: list[float] = []
    with full_fp32_matmul(xs.device):
        x_sq = (xs * xs).sum(dim=1)
        centroids = centroids.to(device=xs.device, dtype=torch.float32)
        for _ in range(n_iter):
            labels, obj = _assign(xs, x_sq, centroids, rows)
            counts = torch.bincount(labels, minlength=k).to(torch.float64)
            stats = torch.cat([_cluster_sums(xs, labels, k, rows).flatten(), counts, obj.reshape(1)])
            if reduce is not None:
                reduce(stats)
            sums, counts = stats[: k * d].view(k, d), stats[k * d : k * d + k]
            losses.append(float(stats[-1]))
            # Empty clusters get a zero centroid here; the split below replaces it.
            centroids = (sums / counts.clamp_min(1.0)[:, None]).to(torch.float32)
            sizes = counts.cpu().clone()
            if bool((sizes == 0).any()):
                host = centroids.cpu()
                _split_empty_clusters(host, sizes, generator)
                centroids = host.to(xs.device)
        labels, _ = _assign(xs, x_sq, centroids, rows)
    return centroids, labels, losses


def initial_generator(seed: int) -> torch.Generator:
    """CPU generator of the k-means seeding and of the splits of empty clusters for `seed`.

    faiss draws its initial points with a Mersenne Twister seeded by seed % (2^31 - 1) + 1 and the same
    Fisher-Yates shuffle as torch.randperm, so `torch.randperm(n, generator=...)[:k]` from this generator
    starts from the same k points as `kmeans`.
    """
    return torch.Generator().manual_seed(int(seed) % (2**31 - 1) + 1)


def checked_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device; ValueError if it is a CUDA device and CUDA is not available."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available; use 'cpu'.")
    return dev


def torch_kmeans(
    x: np.ndarray,
    k: int,
    n_iter: int = 20,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_rows: int | None = None,
) -> KMeansResult:
    """L2 k-means of the rows of `x` in PyTorch on `device`; same result type and checks as `kmeans`.

    The initial centroids are k distinct rows drawn with a CPU torch.Generator seeded from `seed`, so a seed
    gives the same start on every device (and, with current faiss and torch, the same start as `kmeans`).
    Distances are computed in blocks of `batch_rows` rows (default from N and k) so memory stays bounded.
    `losses` has one objective per iteration, measured on the assignment before that iteration's centroid
    update (as faiss records it); `loss` is the last one.
    """
    arr, k, n_iter = checked_kmeans_input(x, k, n_iter)
    n = arr.shape[0]
    if batch_rows is not None and int(batch_rows) < 1:
        raise ValueError(f"batch_rows={batch_rows} is invalid; use None (chosen from N and k) or >= 1.")
    dev = checked_device(device)
    rows = default_batch_rows(n, k) if batch_rows is None else min(int(batch_rows), n)

    generator = initial_generator(seed)
    init = torch.randperm(n, generator=generator)[:k]
    xs = torch.from_numpy(arr).to(dev)
    centroids, labels, losses = lloyd(xs, xs[init.to(dev)].clone(), n_iter, generator, rows)
    labels_np = labels.cpu().numpy()
    centroids_np = centroids.cpu().numpy()

    labels_np, centroids_np, n_empty = fill_empty_clusters(arr, labels_np, centroids_np, seed=seed)
    return KMeansResult(
        labels=labels_np, centroids=centroids_np, loss=losses[-1], n_empty=n_empty, losses=losses
    )
