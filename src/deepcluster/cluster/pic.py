"""Power Iteration Clustering (Lin and Cohen, ICML 2010) on a nearest-neighbour graph, as DeepCluster's official
code runs it (`--clustering PIC`): the number of clusters is found, not given.

1. Graph: each point's `nnn` nearest neighbours (itself left out) among the L2-normalised rows, by the run
   index's choice (`cluster.index.build_index`, kind "auto": exact up to `EXACT_MAX_VECTORS` points, IVF above;
   given a torch device, the run's GPU, an exact search by blocks of matrix products there). The squared
   distance of unit rows is d = 2 - 2 cos; an edge weighs exp(-d / sigma^2); the graph is W = A + A^T
   (duplicates summed: symmetric).
2. Power iteration from the uniform vector: v <- alpha W^T v + (1 - alpha) / N, then v /= sum(v), `iterations`
   times, in float64, carried as v's deviation from 1 / N (see `power_iteration`: the same arithmetic, without
   rounding away the differences of order alpha w that decide the pointers) (scipy.sparse; given a torch device,
   gathers and a sorted accumulation there, deterministic).
3. Pointers: node i points to the neighbour j of largest w_ij (v_j - v_i), to itself when none is positive (ties:
   the smallest j). v grows strictly along pointers, so they make trees; pointer jumping (root <- root[root]
   until nothing moves) finds each tree's root, a local maximum of v. Clusters are the roots, numbered in the
   order of the roots' rows.
4. Singletons (clusters of one point) move to the cluster of their nearest neighbour (in the k-NN list) that is
   not a singleton, when one of their `nnn` neighbours is one (`move_singletons`, as the official code's
   `distribute_singletons`); the clusters are then renumbered 0..C-1 in the same order.

Everything runs on whole arrays (NumPy, scipy.sparse, faiss, torch): no Python loop over nodes or edges, and
memory beyond the points themselves and the index is O(N * nnn). The only random choice is IVF's training
sample and k-means (`seed`): the same points and seed give the same clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch

from deepcluster.cluster.index import EXACT_MAX_VECTORS, build_index, search
from deepcluster.cluster.pca_torch import full_fp32_matmul
from deepcluster.cluster.preprocess import as_float32_matrix

_NORM_ROWS = 1 << 16  # rows per block when checking and normalising the points' norms
_BLOCK_ELEMENTS = 1 << 27  # similarities per block of the exact search on a torch device (512 MiB)


@dataclass(frozen=True)
class PICResult:
    """Output of `pic`."""

    labels: np.ndarray
    """int64 [N]; ids 0..n_clusters-1, each held by at least one point."""
    n_clusters: int
    moved: int
    """Singletons moved to their nearest neighbour's cluster."""
    singletons: int
    """Clusters of one point left (every neighbour of theirs a singleton too, or moving turned off)."""


def unit_rows(points: np.ndarray) -> np.ndarray:
    """`points` as float32 [N, D] rows of norm 1: the array itself when they are already (PCAWhitening's output),
    else a normalised copy (a zero row stays zero)."""
    x = as_float32_matrix(points, "points")
    unit = all(
        np.allclose(np.linalg.norm(x[s : s + _NORM_ROWS], axis=1), 1.0, rtol=0.0, atol=1e-4)
        for s in range(0, len(x), _NORM_ROWS)
    )
    if unit:
        return x
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    for start in range(0, len(out), _NORM_ROWS):
        block = out[start : start + _NORM_ROWS]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), np.float32(1e-12))
    return out


def _torch_search(x: np.ndarray, k: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of every row of `x` with all rows, on `device` in blocks of rows."""
    n = len(x)
    data = torch.from_numpy(x if x.flags.writeable else x.copy()).to(device)
    rows = max(1, min(n, _BLOCK_ELEMENTS // n))
    scores, ids = np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.int64)
    with full_fp32_matmul(device):
        for start in range(0, n, rows):
            best, found = torch.topk(data[start : start + rows] @ data.T, k, dim=1)
            scores[start : start + rows], ids[start : start + rows] = best.cpu().numpy(), found.cpu().numpy()
    return scores, ids


def knn_graph(
    points: np.ndarray,
    nnn: int,
    seed: int = 0,
    device: torch.device | None = None,
    exact_max: int = EXACT_MAX_VECTORS,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `nnn` nearest other rows (at most N - 1) among the L2-normalised `points`: ids int64 [N, m],
    nearest first, -1 where an approximate search found fewer, and squared L2 distances float64 [N, m].

    A row's own id is left out wherever the search returns it (duplicates may push it off the first place); when
    it does not, the farthest neighbour is. Without a `device`: faiss, exact up to `exact_max` rows, IVF above
    (seeded by `seed`); with one: exact, by torch on that device."""
    x = unit_rows(points)
    n = len(x)
    k = min(int(nnn) + 1, n)
    if device is not None:
        scores, found = _torch_search(x, k, device)
    else:
        scores, found = search(build_index(x, "auto", seed, exact_max=exact_max), x, k)
    own = found == np.arange(n)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k - 1)
    keep = np.ones(found.shape, dtype=bool)
    keep[np.arange(n), drop] = False
    ids, sims = found[keep].reshape(n, k - 1), scores[keep].reshape(n, k - 1).astype(np.float64)
    distances = np.where(ids >= 0, np.maximum(2.0 - 2.0 * sims, 0.0), np.inf)
    return ids, distances


def pic_graph(ids: np.ndarray, distances: np.ndarray, sigma: float) -> scipy.sparse.csr_matrix:
    """W = A + A^T, A[i, ids[i, j]] = exp(-distances[i, j] / sigma^2) (float64, canonical CSR: duplicates
    summed, columns sorted); missing neighbours (-1) make no edge."""
    n = len(ids)
    rows = np.repeat(np.arange(n, dtype=np.int64), ids.shape[1])
    cols = ids.ravel()
    present = cols >= 0
    weights = np.exp(-distances.ravel()[present] / float(sigma) ** 2)
    a = scipy.sparse.csr_matrix((weights, (rows[present], cols[present])), shape=(n, n))
    graph = (a + a.T).tocsr()
    graph.sum_duplicates()
    graph.sort_indices()
    return graph


def power_iteration(
    graph: scipy.sparse.csr_matrix, alpha: float, iterations: int, device: torch.device | None = None
) -> np.ndarray:
    """r float64 [N] that orders the nodes as v does after `iterations` of v <- alpha W^T v + (1 - alpha) / N,
    v /= sum(v), from v = 1 / N (W is symmetric: W^T v = W v): the last v is (alpha r + 1 - alpha) / (N S), S > 0,
    an increasing affine function of r, so w_ij (v_j - v_i) and w_ij (r_j - r_i) have the same sign and order.

    The iteration is carried as v's deviation from uniform, v = (1 + delta) / N: r = d + W delta (d: W's row
    sums), S = 1 - alpha + alpha mean(r), delta <- alpha (r - mean(r)) / S. The same arithmetic as v's, without
    adding a deviation of order alpha w to 1 / N: in 256 whitened dimensions nearest neighbours lie at a squared
    distance near 1.5, weights of exp(-1.5 / 0.04) ~ 1e-16, which v itself rounds away even in float64 (half of
    the images were then singletons on the embedded split). scipy.sparse, or given a torch `device`, a gather and
    an accumulation over the sorted rows there (`index_put_(accumulate=True)`: no atomic adds on CUDA, the same
    sums every time)."""
    n = graph.shape[0]
    degree = np.asarray(graph.sum(axis=1), dtype=np.float64).ravel()
    if device is not None:
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(graph.indptr))
        r_ids, c_ids = (torch.from_numpy(a).to(device) for a in (rows, graph.indices.astype(np.int64)))
        weights, d = (torch.from_numpy(a).to(device) for a in (graph.data, degree))
        delta = torch.zeros(n, dtype=torch.float64, device=device)
        for _ in range(int(iterations)):
            product = torch.zeros(n, dtype=torch.float64, device=device)
            r = d + product.index_put_((r_ids,), weights * delta[c_ids], accumulate=True)
            mean = r.mean()
            delta = alpha * (r - mean) / (1.0 - alpha + alpha * mean)
        return r.cpu().numpy()
    delta = np.zeros(n)
    for _ in range(int(iterations)):
        r = degree + graph @ delta
        mean = r.mean()
        delta = alpha * (r - mean) / (1.0 - alpha + alpha * mean)
    return r


def pointer_roots(graph: scipy.sparse.csr_matrix, v: np.ndarray) -> np.ndarray:
    """The root (local maximum of `v`, or of `power_iteration`'s r, which orders the nodes as v) each node's
    pointers lead to, int64 [N] (see the module's step 3)."""
    n = graph.shape[0]
    pointer = np.arange(n, dtype=np.int64)
    degree = np.diff(graph.indptr)
    if graph.nnz:
        rows = np.repeat(np.arange(n, dtype=np.int64), degree)
        gain = graph.data * (v[graph.indices] - v[rows])
        linked = degree > 0
        row_best = np.zeros(n)
        row_best[linked] = np.maximum.reduceat(gain, graph.indptr[:-1][linked])
        candidates = np.flatnonzero((gain > 0) & (gain == row_best[rows]))
        # columns are sorted within a row: a row's first candidate is its smallest j among equal gains
        heads, first = np.unique(rows[candidates], return_index=True)
        pointer[heads] = graph.indices[candidates[first]]
    root = pointer
    while True:  # each pass halves the longest remaining path: about log2(depth) passes
        jumped = root[root]
        if np.array_equal(jumped, root):
            return root
        root = jumped


def move_singletons(labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels renumbered 0..C-1, how many moved) after each point alone in its cluster joined the cluster of
    its nearest neighbour in `ids` [N, m] (nearest first) whose cluster holds two points or more; one with no
    such neighbour stays alone. Sizes are those before any move (as the official code's)."""
    sizes = np.bincount(labels)
    alone = np.flatnonzero(sizes[labels] == 1)
    near = ids[alone]
    joinable = (near >= 0) & (sizes[labels[np.maximum(near, 0)]] > 1)
    movers = joinable.any(axis=1)
    moved = labels.copy()
    targets = near[movers, joinable[movers].argmax(axis=1)]
    moved[alone[movers]] = labels[targets]
    return np.unique(moved, return_inverse=True)[1].astype(np.int64), int(movers.sum())


def pic_labels(
    ids: np.ndarray,
    distances: np.ndarray,
    sigma: float = 0.2,
    alpha: float = 0.001,
    iterations: int = 200,
    singletons: bool = True,
    device: torch.device | None = None,
) -> PICResult:
    """PIC's clusters of the graph given by each node's neighbours `ids` [N, m] (nearest first, -1: none) and
    their squared distances [N, m] (the module's steps 2-4; `knn_graph` makes them from points)."""
    if not sigma > 0 or not 0 < alpha < 1 or int(iterations) < 1:
        raise ValueError(
            f"PIC needs sigma > 0, 0 < alpha < 1 and iterations >= 1; got {sigma}, {alpha}, {iterations}"
        )
    graph = pic_graph(ids, distances, sigma)
    v = power_iteration(graph, alpha, iterations, device)
    labels = np.unique(pointer_roots(graph, v), return_inverse=True)[1].astype(np.int64)
    moved = 0
    if singletons:
        labels, moved = move_singletons(labels, ids)
    sizes = np.bincount(labels)
    return PICResult(labels, int(len(sizes)), moved, int((sizes == 1).sum()))


def pic(
    points: np.ndarray,
    nnn: int = 5,
    sigma: float = 0.2,
    alpha: float = 0.001,
    iterations: int = 200,
    singletons: bool = True,
    seed: int = 0,
    device: torch.device | None = None,
    exact_max: int = EXACT_MAX_VECTORS,
) -> PICResult:
    """Clusters of `points` [N, D] (L2-normalised here when they are not) by PIC on their `nnn`-nearest-neighbour
    graph; `singletons`: move singletons (see the module's steps). Given a torch `device` (the run's GPU), the
    graph and the power iteration are computed there; else by faiss and scipy.sparse on the CPU."""
    if int(nnn) < 1:
        raise ValueError(f"nnn={nnn}: PIC needs at least 1 neighbour per point")
    ids, distances = knn_graph(points, nnn, seed=seed, device=device, exact_max=exact_max)
    return pic_labels(ids, distances, sigma, alpha, iterations, singletons, device)


def cluster_means(points: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """float32 [C, D]: the mean of each cluster's rows of `points` (summed in float64, by blocks of rows)."""
    x = as_float32_matrix(points, "points")
    sums = np.zeros((n_clusters, x.shape[1]))
    for start in range(0, len(x), _NORM_ROWS):
        part = labels[start : start + _NORM_ROWS]
        members = scipy.sparse.csr_matrix(
            (np.ones(len(part)), (part, np.arange(len(part)))), shape=(n_clusters, len(part))
        )
        sums += members @ x[start : start + _NORM_ROWS].astype(np.float64)
    counts = np.bincount(labels, minlength=n_clusters).astype(np.float64)
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)
