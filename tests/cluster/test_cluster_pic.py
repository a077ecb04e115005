"""Power Iteration Clustering (`cluster.pic`): planted groups found without k, the vectorised steps against a
loop-by-loop reference written from the official code's definition, singletons moved, the torch path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import adjusted_rand_score

from deepcluster.cluster.pic import cluster_means, knn_graph, pic, pic_graph, pic_labels, power_iteration


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def _cored_blobs(groups: int, per: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around random unit centres, each point with its own spread (log-uniform from 0.003 to
    0.05 per dimension): every blob has a dense core, the kind of group PIC's local maxima find (a blob whose
    points all lie as far from the centre, an isotropic Gaussian in many dimensions, splits into several)."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((groups, dim)))
    truth = np.repeat(np.arange(groups), per)
    spread = np.exp(rng.uniform(np.log(0.003), np.log(0.05), size=len(truth)))
    return (centres[truth] + spread[:, None] * rng.standard_normal((len(truth), dim))).astype(
        np.float32
    ), truth


def _attachment_graph(groups: int, size: int, nnn: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists [N, nnn] of `groups` separate components grown by preferential attachment (each new node
    lists `nnn` earlier nodes of its component, drawn in proportion to their degree + 1; -1 pads the first
    nodes' lists), and the planted component of every node."""
    rng = np.random.default_rng(seed)
    ids = np.full((groups * size, nnn), -1, dtype=np.int64)
    for group in range(groups):
        degree = np.zeros(size)
        for node in range(1, size):
            weights = degree[:node] + 1
            picked = rng.choice(node, size=min(nnn, node), replace=False, p=weights / weights.sum())
            ids[group * size + node, : len(picked)] = group * size + picked
            degree[picked] += 1
            degree[node] += len(picked)
    return ids, np.repeat(np.arange(groups), size)


def _reference(
    ids: np.ndarray, distances: np.ndarray, sigma: float, alpha: float, iterations: int, move: bool
) -> np.ndarray:
    """PIC as the official code writes it, node by node (dense W, pointers by a loop over each row's columns in
    order with a strict improvement, roots by walking the pointers, singletons by the first non-singleton in
    the neighbour list), clusters numbered by their roots' rows."""
    n = len(ids)
    a = np.zeros((n, n))
    for i in range(n):
        for j, d in zip(ids[i], distances[i], strict=True):
            if j >= 0:
                a[i, j] += np.exp(-d / sigma**2)
    w = a + a.T
    v = np.full(n, 1.0 / n)
    for _ in range(iterations):
        v = alpha * (w.T @ v) + (1 - alpha) / n
        v /= v.sum()
    pointers = list(range(n))
    for i in range(n):
        best = 0.0
        for j in range(n):
            if w[i, j] != 0 and w[i, j] * (v[j] - v[i]) > best:
                best, pointers[i] = w[i, j] * (v[j] - v[i]), j
    roots = []
    for i in range(n):
        node = i
        while pointers[node] != node:
            node = pointers[node]
        roots.append(node)
    labels = np.array([sorted(set(roots)).index(r) for r in roots])
    if move:
        sizes = np.bincount(labels)
        moved = labels.copy()
        for s in range(n):
            if sizes[labels[s]] == 1:
                for j in ids[s]:
                    if j >= 0 and sizes[labels[j]] > 1:
                        moved[s] = labels[j]
                        break
        labels = np.array([sorted(set(moved)).index(c) for c in moved])
    return labels


def test_planted_blobs_are_found_without_k_exactly_and_on_an_ivf_graph() -> None:
    points, truth = _cored_blobs(groups=12, per=60, dim=128, seed=0)
    exact = pic(points)
    assert adjusted_rand_score(truth, exact.labels) > 0.95
    assert exact.n_clusters == len(np.unique(exact.labels)) == exact.labels.max() + 1
    approximate = pic(points, exact_max=100, seed=5)  # above 100 points: the IVF index, as the run index does
    assert adjusted_rand_score(truth, approximate.labels) > 0.95
    np.testing.assert_array_equal(pic(points, exact_max=100, seed=5).labels, approximate.labels)


def test_a_graph_of_known_components_is_split_into_them() -> None:
    ids, truth = _attachment_graph(groups=6, size=80, nnn=5, seed=0)
    edges = ids >= 0
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])[edges.ravel()]
    adjacency = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, ids[edges])), shape=(len(ids),) * 2)
    found, components = connected_components(adjacency, directed=False)
    assert (
        found == 6 and adjusted_rand_score(truth, components) == 1.0
    )  # the planted components, independently
    result = pic_labels(ids, np.where(edges, 0.05, np.inf))
    assert adjusted_rand_score(truth, result.labels) > 0.95


@pytest.mark.parametrize("move", [True, False])
def test_the_vectorised_steps_give_the_loop_reference_s_clusters(move: bool) -> None:
    # no structure: many local maxima, and 8 nodes cut off below
    points = np.random.default_rng(1).standard_normal((240, 12)).astype(np.float32)
    ids, distances = knn_graph(points, 5)
    x = _unit(points).astype(np.float64)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    np.testing.assert_array_equal(ids, np.argsort(-similarity, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(distances, 2 - 2 * np.take_along_axis(similarity, ids, axis=1), atol=1e-5)
    cut = np.arange(0, 240, 30)  # 8 nodes whose edges, both ways, weigh nothing: singletons
    distances[cut] = np.inf
    distances[np.isin(ids, cut)] = np.inf
    result = pic_labels(ids, distances, singletons=move)
    expected = _reference(ids, distances, 0.2, 0.001, 200, move)
    assert result.n_clusters > 10
    assert result.moved + result.singletons >= 8 and (result.moved >= 8) == move
    np.testing.assert_array_equal(result.labels, expected)


def test_singletons_move_to_their_nearest_non_singleton_neighbour_s_cluster() -> None:
    """A star (hub 0, leaves 1-5); node 6 whose edges weigh nothing (exp(-inf)) to leaf 1 then the hub: a
    local maximum nobody points to, a singleton, moved to the star; nodes 7 and 8 listing only each other with
    weightless edges: singletons whose neighbours are singletons, left alone."""
    inf = np.inf
    ids = np.array([[1, -1], [0, -1], [0, -1], [0, -1], [0, -1], [0, -1], [1, 0], [8, -1], [7, -1]])
    distances = np.array([[0.01, inf], *[[0.01, inf]] * 5, [inf, inf], [inf, inf], [inf, inf]])
    kept = pic_labels(ids, distances, singletons=False)
    np.testing.assert_array_equal(kept.labels, [0, 0, 0, 0, 0, 0, 1, 2, 3])
    assert (kept.moved, kept.singletons) == (0, 3)
    moved = pic_labels(ids, distances)
    np.testing.assert_array_equal(moved.labels, [0, 0, 0, 0, 0, 0, 0, 1, 2])
    assert (moved.moved, moved.singletons, moved.n_clusters) == (1, 2, 3)


def test_the_torch_path_gives_the_numpy_path_s_clusters() -> None:
    points, _ = _cored_blobs(groups=5, per=40, dim=32, seed=2)
    on_cpu = pic(points)
    on_torch = pic(points, device=torch.device("cpu"))  # the code a CUDA run takes, here on the CPU
    np.testing.assert_array_equal(on_torch.labels, on_cpu.labels)
    ids, distances = knn_graph(points, 5)
    graph = pic_graph(ids, distances, 0.2)
    np.testing.assert_allclose(
        power_iteration(graph, 0.001, 50, torch.device("cpu")), power_iteration(graph, 0.001, 50), rtol=1e-12
    )


def test_cluster_means_are_the_members_means() -> None:
    rng = np.random.default_rng(3)
    points, labels = rng.standard_normal((500, 7)).astype(np.float32), rng.integers(0, 9, size=500)
    expected = np.stack([points[labels == c].astype(np.float64).mean(axis=0) for c in range(9)])
    np.testing.assert_allclose(cluster_means(points, labels, 9), expected, rtol=1e-6, atol=1e-7)


def test_weights_that_v_itself_rounds_away_still_decide_the_pointers() -> None:
    """A star of 6 leaves at squared distance 1.5 from its hub (weights exp(-1.5 / 0.04) ~ 5e-17, as nearest
    neighbours in 256 whitened dimensions): v = (1 + O(alpha w)) / N is 1 / N to the last bit of a float64, yet
    the hub's larger weighted degree makes it v's maximum; every leaf points to it: one cluster."""
    ids = np.array([[1], [0], [0], [0], [0], [0], [0]])
    distances = np.full((7, 1), 1.5)
    v = np.full(7, 1 / 7)
    graph = pic_graph(ids, distances, 0.2)
    for _ in range(200):
        v = 0.001 * (graph @ v) + 0.999 / 7
        v /= v.sum()
    assert np.ptp(v) == 0  # the iteration as written: no differences left, every node a local maximum
    result = pic_labels(ids, distances, singletons=False)
    np.testing.assert_array_equal(result.labels, np.zeros(7))
