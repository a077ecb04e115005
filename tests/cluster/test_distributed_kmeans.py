"""Tests for deepcluster.cluster.distributed: k-means, empty-cluster filling and PCA over sharded rows.

Two processes run tests/cluster/distributed_kmeans_worker.py under torchrun (gloo, CPU) once per module; their
results are compared with the single-process functions on the whole matrices here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from deepcluster.cluster import PCAWhitening, fill_empty_clusters
from deepcluster.cluster import kmeans_torch as tk
from deepcluster.cluster.kmeans_torch import torch_kmeans
from distributed_kmeans_worker import (
    FILL_SEED,
    KMEANS_CASES,
    PCA_CASES,
    blobs,
    compute,
    correlated,
    duplicates,
    fill_inputs,
)

pytestmark = pytest.mark.usefixtures("one_thread")

WORKER = Path(__file__).with_name("distributed_kmeans_worker.py")
SPLITS = ["", "uneven_"]  # result prefixes: shard_range's blocks, and all rows on the last rank


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, np.ndarray]]:
    """What each of the two worker processes computed."""
    out = tmp_path_factory.mktemp("distributed_kmeans")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*command, str(WORKER), str(out)], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]


def _assert_same_on_every_rank(ranks: list[dict[str, np.ndarray]], prefix: str, name: str) -> None:
    keys = [key for key in ranks[0] if key.startswith(prefix + name)]
    assert keys
    for key in keys:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)


@pytest.mark.parametrize("prefix", SPLITS)
@pytest.mark.parametrize("name", list(KMEANS_CASES))
def test_kmeans_matches_torch_kmeans(
    ranks: list[dict[str, np.ndarray]], name: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    k, n_iter, seed = KMEANS_CASES[name]
    x = blobs() if name == "blobs" else duplicates()
    splits: list[int] = []
    split = tk._split_empty_clusters
    monkeypatch.setattr(tk, "_split_empty_clusters", lambda *args: splits.append(split(*args)) or splits[-1])
    ref = torch_kmeans(x, k, n_iter=n_iter, seed=seed)
    got = ranks[0]
    np.testing.assert_array_equal(got[f"{prefix}{name}_labels"], ref.labels)
    np.testing.assert_allclose(got[f"{prefix}{name}_centroids"], ref.centroids, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[f"{prefix}{name}_losses"], ref.losses, rtol=1e-9)
    assert int(got[f"{prefix}{name}_n_empty"]) == ref.n_empty
    _assert_same_on_every_rank(ranks, prefix, name)
    if name == "duplicates":  # the case must exercise both repairs: splits in training and the final fill
        assert sum(splits) > 0 and ref.n_empty > 0
        assert np.bincount(ref.labels, minlength=k).min() >= 1


@pytest.mark.parametrize("prefix", SPLITS)
def test_fill_matches_fill_empty_clusters(ranks: list[dict[str, np.ndarray]], prefix: str) -> None:
    x, labels, centroids = fill_inputs()
    ref_labels, ref_centroids, ref_empty = fill_empty_clusters(x, labels, centroids, seed=FILL_SEED)
    got = np.concatenate([ranks[0][f"{prefix}fill_labels_0"], ranks[1][f"{prefix}fill_labels_1"]])
    assert ref_empty == 7 and int(ranks[0][f"{prefix}fill_n_empty"]) == 7
    np.testing.assert_array_equal(got, ref_labels)
    np.testing.assert_array_equal(ranks[0][f"{prefix}fill_centroids"], ref_centroids)
    np.testing.assert_array_equal(ranks[1][f"{prefix}fill_centroids"], ref_centroids)


@pytest.mark.parametrize("prefix", SPLITS)
@pytest.mark.parametrize("name", list(PCA_CASES))
def test_pca_matches_single_process_fit(ranks: list[dict[str, np.ndarray]], name: str, prefix: str) -> None:
    dim, sample_size, seed = PCA_CASES[name]
    x = correlated()
    ref = PCAWhitening(dim).fit(x, sample_size=sample_size, seed=seed)
    state = {key: ranks[0][f"{prefix}{name}_{key}"] for key in ref.state_dict()}
    got = PCAWhitening.from_state_dict(state)
    assert got.input_dim == ref.input_dim and got.dim == ref.dim
    assert got.mean is not None and got.matrix is not None and got.eigenvalues is not None
    assert ref.mean is not None and ref.matrix is not None and ref.eigenvalues is not None
    np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-6)
    np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, rtol=1e-5)
    sign = np.sign((got.matrix * ref.matrix).sum(axis=1))  # eigenvectors are defined up to sign
    np.testing.assert_allclose(got.matrix * sign[:, None], ref.matrix, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.apply(x) * sign, ref.apply(x), rtol=0, atol=1e-5)
    _assert_same_on_every_rank(ranks, prefix, name)


def test_input_invalid_on_one_rank_raises_on_every_rank(ranks: list[dict[str, np.ndarray]]) -> None:
    for rank in ranks:  # rank 1 passed k=6 where rank 0 passed k=5
        assert "k differs across ranks" in str(rank["error_k"])
    assert "non-finite" in str(ranks[1]["error_nan"])  # rank 1's shard holds a NaN
    assert "rank(s) [1]" in str(ranks[0]["error_nan"])


def test_one_process_equals_single_process_functions(tmp_path: Path) -> None:
    expected = compute()  # no process group: the distributed functions call the single-process ones
    x = blobs()
    np.testing.assert_array_equal(expected["blobs_labels"], torch_kmeans(x, *KMEANS_CASES["blobs"]).labels)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        got = compute()  # the distributed code paths, with one rank holding all rows
    finally:
        dist.destroy_process_group()
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
