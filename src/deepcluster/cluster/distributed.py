"""k-means and PCA-whitening fitted across the processes of a torchrun job, each holding one shard of the rows.

Shards: process r holds rows [offset_r, offset_r + n_r) of the N x D feature matrix, in contiguous blocks in
rank order (as `deepcluster.engine.distributed.shard_range` cuts them); a shard may be empty (shape (0, D)).
Every rank passes only its own shard: N, the offsets and D are all-gathered from the shards' shapes. The other
arguments must be the same on every rank (checked: a mismatch raises ValueError on every rank).

Collectives run on the default process group (`torch.distributed`); the tensors given to them live on
`device`: 'cpu' for gloo, this process's CUDA device for NCCL. The k-means iterations also run on `device`;
the PCA's products run in NumPy on the CPU, as in `PCAWhitening.fit`.

Results equal the single-process ones on the whole matrix: `distributed_kmeans` gives `torch_kmeans`'s
labels and centroids (up to float64 rounding in the per-cluster sums, which the float32 centroids almost
never see), `distributed_pca_fit` gives `PCAWhitening.fit` up to float rounding. Without an initialised
process group each function calls the single-process one. The shard checks and the collectives they share
live in `deepcluster.cluster.distributed_shards`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from deepcluster.cluster.distributed_shards import (
    _all_gather_rows,
    _all_reduce_sum,
    _gather_layout,
    _gather_rows_to_root,
    _is_distributed,
    _Layout,
)
from deepcluster.cluster.kmeans import KMeansResult, _check_k, _split_in_two, fill_empty_clusters
from deepcluster.cluster.kmeans_torch import (
    checked_device,
    default_batch_rows,
    initial_generator,
    lloyd,
    torch_kmeans,
)
from deepcluster.cluster.preprocess import (
    PCAWhitening,
    as_float32_matrix,
    centred_scatter,
    leading_eigenpairs,
)


def _fill(
    arr: np.ndarray,
    layout: _Layout,
    labels: np.ndarray,
    centroids: np.ndarray,
    seed: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, int]:
    """`fill_empty_clusters` over the shards: same splits, same rng draws, same centroids (see the public
    `distributed_fill_empty_clusters`). Rank 0 splits each cluster and broadcasts the outcome."""
    lab = np.array(labels, dtype=np.int64, copy=True)
    cents = np.array(centroids, dtype=np.float32, copy=True)
    k, d = cents.shape
    local_counts = torch.from_numpy(np.bincount(lab, minlength=k)[None]).to(device)
    # [world, k]: members of each cluster on each rank
    per_rank_np = _all_gather_rows(local_counts, [1] * len(layout.sizes)).cpu().numpy()
    counts = per_rank_np.sum(axis=0)
    empty = np.flatnonzero(counts == 0)
    rng = np.random.default_rng(seed) if layout.rank == 0 else None
    for j in empty:
        c = int(np.argmax(counts))
        if counts[c] <= 1:
            raise ValueError(
                f"cannot fill empty clusters: every cluster has at most one point; k={k} must be <= "
                f"the number of images ({layout.n_total})."
            )
        members = np.flatnonzero(lab == c)
        points = _gather_rows_to_root(arr[members], per_rank_np[:, c].tolist(), device)
        m = int(counts[c])
        outcome = torch.empty(m + 2 * d, dtype=torch.float32, device=device)
        # Rank 0 holds the points of c in global row order, as fill_empty_clusters sees them, and splits them.
        if points is not None:
            assert rng is not None
            leave = _split_in_two(points, rng)
            moved_mean = points[leave].astype(np.float64).mean(axis=0).astype(np.float32)
            kept_mean = points[~leave].astype(np.float64).mean(axis=0).astype(np.float32)
            packed = np.concatenate([leave.astype(np.float32), moved_mean, kept_mean])
            outcome.copy_(torch.from_numpy(packed))
        dist.broadcast(outcome, src=0)
        result = outcome.cpu().numpy()
        leave_all = result[:m] > 0.5
        cents[j], cents[c] = result[m : m + d], result[m + d :]
        bounds = np.concatenate([[0], np.cumsum(per_rank_np[:, c])])
        moved_per_rank = np.array(
            [leave_all[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        )
        lab[members[leave_all[bounds[layout.rank] : bounds[layout.rank + 1]]]] = j
        per_rank_np[:, j] = moved_per_rank
        per_rank_np[:, c] -= moved_per_rank
        counts[j], counts[c] = per_rank_np[:, j].sum(), per_rank_np[:, c].sum()
    return lab, cents, len(empty)


def distributed_fill_empty_clusters(
    shard: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray, int]:
    """`fill_empty_clusters` on a matrix split across ranks; every rank calls it with its own shard.

    `labels` [n_r] are this rank's rows' labels; `centroids` [k, D] and `seed` are the same on every rank.
    For each empty id (ascending) the globally largest cluster's members are gathered in global row order
    to rank 0, split there with the same 2-means and rng sequence as `fill_empty_clusters`, and the outcome
    (which members leave, both new centroids) is broadcast; every rank relabels its own rows. Returns
    (this rank's labels int64 [n_r], centroids float32 [k, D] identical on every rank, number of empty
    clusters), exactly what `fill_empty_clusters` gives on the concatenated shards and labels.
    """
    if not _is_distributed():
        return fill_empty_clusters(shard, labels, centroids, seed=seed)
    dev = checked_device(device)
    cents = np.asarray(centroids)

    def check(arr: np.ndarray) -> None:
        lab = np.asarray(labels)
        if lab.shape != (arr.shape[0],):
            raise ValueError(f"labels must have shape ({arr.shape[0]},) to match the shard; got {lab.shape}.")
        if cents.ndim != 2 or cents.shape[1] != arr.shape[1]:
            raise ValueError(
                f"centroids must have shape (k, {arr.shape[1]}) to match the features; got {cents.shape}."
            )
        if lab.size and (lab.min() < 0 or lab.max() >= cents.shape[0]):
            raise ValueError(
                f"labels must lie in 0..{cents.shape[0] - 1} (one per centroid); got {lab.min()}..{lab.max()}."
            )

    k = cents.shape[0] if cents.ndim == 2 else -1
    arr, layout = _gather_layout(shard, {"k": k, "seed": seed}, dev, check)
    return _fill(arr, layout, np.asarray(labels), as_float32_matrix(cents, name="centroids"), seed, dev)


def distributed_kmeans(
    shard: np.ndarray,
    k: int,
    n_iter: int = 20,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_rows: int | None = None,
) -> KMeansResult:
    """`torch_kmeans` of the N x D matrix whose rows are split across ranks; every rank passes its own shard.

    Same algorithm and result as `torch_kmeans` on the whole matrix: the initial centroids are the same
    global rows (each rank contributes the ones it owns), every iteration all-reduces the per-cluster float64
    sums, the counts and the objective, empty clusters are split with the same generator draws on every
    rank, and `distributed_fill_empty_clusters` repairs the final assignment. `k`, `n_iter` and `seed` must
    be the same on every rank; `batch_rows` bounds this rank's distance blocks (default from its rows and k).
    Returns, on every rank, the same `KMeansResult`: labels of all N rows (global row order), centroids,
    loss, n_empty and losses. Without an initialised process group this is `torch_kmeans(shard, ...)`.
    """
    if not _is_distributed():
        return torch_kmeans(shard, k, n_iter=n_iter, seed=seed, device=device, batch_rows=batch_rows)
    dev = checked_device(device)

    def check(_: np.ndarray) -> None:
        if batch_rows is not None and int(batch_rows) < 1:
            raise ValueError(f"batch_rows={batch_rows} is invalid; use None (chosen from N and k) or >= 1.")

    arr, layout = _gather_layout(shard, {"k": k, "n_iter": n_iter, "seed": seed}, dev, check)
    k, n_iter = int(k), int(n_iter)
    _check_k(k, layout.n_total)
    if n_iter < 1:
        raise ValueError(f"kmeans_iters={n_iter} is invalid; use 1 or more k-means iterations.")
    n_local = arr.shape[0]
    rows = default_batch_rows(n_local, k) if batch_rows is None else min(int(batch_rows), max(n_local, 1))

    generator = initial_generator(seed)
    init = torch.randperm(layout.n_total, generator=generator)[:k]
    xs = torch.from_numpy(arr).to(dev)
    # The initial centroids are global rows: each row's owner writes it, the others contribute zeros.
    centroids = torch.zeros(k, layout.d, dtype=torch.float32, device=dev)
    mine = torch.nonzero((init >= layout.offset) & (init < layout.offset + n_local)).flatten()
    centroids[mine.to(dev)] = xs[(init[mine] - layout.offset).to(dev)]
    dist.all_reduce(centroids, op=dist.ReduceOp.SUM)
    centroids, labels, losses = lloyd(xs, centroids, n_iter, generator, rows, reduce=_all_reduce_sum)

    local_labels, cents, n_empty = _fill(
        arr, layout, labels.cpu().numpy(), centroids.cpu().numpy(), seed, dev
    )
    all_labels = _all_gather_rows(torch.from_numpy(local_labels).to(dev), layout.sizes).cpu().numpy()
    # The centroids and losses already agree across ranks; rank 0's copy makes them bitwise identical.
    final = torch.from_numpy(np.concatenate([cents.astype(np.float64).ravel(), losses])).to(dev)
    dist.broadcast(final, src=0)
    final_np = final.cpu().numpy()
    cents = final_np[: cents.size].astype(np.float32).reshape(cents.shape)
    losses = final_np[cents.size :].tolist()
    return KMeansResult(labels=all_labels, centroids=cents, loss=losses[-1], n_empty=n_empty, losses=losses)


def _broadcast_pca(pca: PCAWhitening | None, error: Exception | None, d: int, device: torch.device) -> None:
    """Send rank 0's fitted `pca` (or its failure) to every rank, filling `pca` in place on the others."""
    status = torch.tensor([0 if error is not None else 1], dtype=torch.int64, device=device)
    dist.broadcast(status, src=0)
    if error is not None:
        raise error
    if int(status.item()) == 0:
        raise RuntimeError("rank 0 failed to fit the PCA (see the error raised there).")
    assert pca is not None
    dim = pca.dim
    payload = torch.empty(d + dim * d + dim, dtype=torch.float32, device=device)
    if dist.get_rank() == 0:
        assert pca.mean is not None and pca.matrix is not None and pca.eigenvalues is not None
        payload.copy_(torch.from_numpy(np.concatenate([pca.mean, pca.matrix.ravel(), pca.eigenvalues])))
    dist.broadcast(payload, src=0)
    if dist.get_rank() != 0:
        values = payload.cpu().numpy()
        pca.input_dim = d
        pca.mean = values[:d].copy()
        pca.matrix = values[d : d + dim * d].reshape(dim, d).copy()
        pca.eigenvalues = values[d + dim * d :].copy()


def distributed_pca_fit(
    shard: np.ndarray,
    dim: int = 256,
    sample_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    eigen_power: float = -0.5,
    l2_normalize: bool = True,
) -> PCAWhitening:
    """`PCAWhitening(dim, eigen_power, l2_normalize).fit(full_matrix, sample_size, seed)` with the rows split
    across ranks; every rank passes its own shard and the same other arguments.

    The same global sample rows are drawn as in `PCAWhitening.fit`; each rank uses the sampled rows it owns.
    When the training rows number at least D, the mean is an all-reduce of float64 row sums and the
    covariance a reduce of float64 sums of centred outer products (float32 GEMMs over chunks, as in the
    single-process fit); otherwise (fewer training rows than D) the sampled rows are gathered to rank 0,
    which fits on them. Rank 0 solves the eigenproblem and broadcasts the fitted arrays. Returns on every
    rank a fitted `PCAWhitening` with identical arrays, equal to the single-process fit up to float rounding
    (exactly equal with one process, or with fewer training rows than D). Without an initialised process
    group this is `PCAWhitening(...).fit(shard, sample_size, seed)`.
    """
    pca = PCAWhitening(dim=dim, eigen_power=eigen_power, l2_normalize=l2_normalize)
    if not _is_distributed():
        return pca.fit(shard, sample_size=sample_size, seed=seed)
    dev = checked_device(device)
    params = {
        "dim": dim,
        "sample_size": sample_size,
        "seed": seed,
        "eigen_power": float(eigen_power),
        "l2_normalize": int(bool(l2_normalize)),
    }
    arr, layout = _gather_layout(shard, params, dev)
    n, d = layout.n_total, layout.d
    if sample_size is not None and sample_size < 1:
        raise ValueError(f"sample_size must be >= 1 (got {sample_size}); use None to fit on all rows.")
    if not pca.uses_pca:
        return pca.fit(np.zeros((1, d), dtype=np.float32))  # no PCA: only the input dimension is recorded

    bounds = np.cumsum([0, *layout.sizes])
    if sample_size is not None and sample_size < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))
        cuts = np.searchsorted(rows, bounds)
        per_rank = np.diff(cuts).tolist()
        local = arr[rows[cuts[layout.rank] : cuts[layout.rank + 1]] - layout.offset]
    else:
        per_rank, local = list(layout.sizes), arr
    n_train = sum(per_rank)
    if pca.dim > min(n_train, d):
        raise ValueError(
            f"pca_dim={pca.dim} is larger than min(number of training rows, feature dimension) = "
            f"min({n_train}, {d}); lower pca_dim to at most {min(n_train, d)} (or use more images)."
        )

    error: Exception | None = None
    if n_train < d:  # Gram-matrix case: the training rows are few, rank 0 fits on all of them
        points = _gather_rows_to_root(local, per_rank, dev)
        if points is not None:
            try:
                pca.fit(points)
            except Exception as exc:  # sent to the other ranks before it is raised
                error = exc
        _broadcast_pca(pca, error, d, dev)
        return pca

    total = torch.from_numpy(local.sum(axis=0, dtype=np.float64)).to(dev)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    mean = total.cpu().numpy() / n_train
    scatter = torch.from_numpy(centred_scatter(local, mean.astype(np.float32))).to(dev)
    dist.reduce(scatter, dst=0, op=dist.ReduceOp.SUM)
    if layout.rank == 0:
        try:
            values, vectors = leading_eigenpairs(scatter.cpu().numpy() / n_train, pca.dim)
            pca.set_axes(mean, vectors.T.astype(np.float64), values)
        except Exception as exc:  # sent to the other ranks before it is raised
            error = exc
    _broadcast_pca(pca, error, d, dev)
    return pca
