"""Whole runs under `torchrun --standalone --nproc_per_node=2` (gloo on the CPU), for every method.

Each run must leave the same complete run directory a single process leaves, and its labels must be what the
single-process assignment gives on the same (gathered) features, and what the method's rule gives, computed in
NumPy from the run's features and assigner; a run stopped after one epoch and resumed must end where an unbroken
run ends.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster import load_config
from deepcluster.config import apply_overrides
from deepcluster.engine.distributed import Processes, shard_range
from deepcluster.engine.loop import Trainer
from deepcluster.methods import Assignment, build_method
from deepcluster.models import build_backbone
from deepcluster.seeding import derive_seed
from deepcluster.storage import RunDir, load_checkpoint
from synthetic import assert_same_run, small_config, torchrun, write_pattern_npz

N_IMAGES = 160
SEED = 3
BATCH = 32
EPOCH_SIZE = 64
STEPS_PER_EPOCH = EPOCH_SIZE // BATCH


def _train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return torchrun(
        [
            "--method", "deepcluster", "--arch", "alexnet_small_gap", "--data", str(data), "--out", str(out),
            "--k", "8", "--batch-size", str(BATCH),
            "--epoch-size", str(EPOCH_SIZE), "--epochs", "2", "--seed", str(SEED), "--no-progress",
            "--save-features", "--set", "cluster.pca_dim=16", "--set", "optim.schedule=constant",
            "--set", "run.checkpoint_every=0", "--set", "run.report=false", "--set", "run.knn_monitor=0", *extra,
        ],
        out.parent,
    )  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("data") / "patterns.npz", n=N_IMAGES)


def _check_complete(run: Path, epochs: int, done: subprocess.CompletedProcess[str]) -> None:
    """Everything a single-process run writes, written once (by the main process)."""
    for name in ("config.yaml", "checkpoints/last.pt", "train.log", "features.npy"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "labels").iterdir()) == [f"epoch_{e:03d}.npy" for e in range(epochs)]
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in history] == list(range(epochs))
    assert all(np.isfinite(record["loss"]) for record in history)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    with (run / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == N_IMAGES and sorted(int(r["index"]) for r in rows) == list(range(N_IMAGES))
    assert not (run / "cache").exists(), "the machine's shared decoded images must be removed"
    log = (run / "train.log").read_text()
    assert log.count("2 processes (gloo), this is rank 0") == 1 and "rank 1" not in log
    assert done.stdout.count("run directory:") == 1, "only the main process reports"
    checkpoint = load_checkpoint(run / "checkpoints/last.pt")
    assert len(checkpoint["rng_ranks"]) == 2


def _single_process_labels(run: Path, **cluster: object) -> np.ndarray:
    """The labels one process assigns to the run's saved features: those of its final assignment (after the
    last of its 2 epochs), whose labels are the method's `predict` rule (labels.csv)."""
    config = load_config(run / "config.yaml")
    if cluster:
        config = apply_overrides(config, {"cluster": cluster})
    key = ("final", 2)
    features = np.load(run / "features.npy")
    method = build_method(config)
    return method.final(
        features, method.assign(features, None, seed=derive_seed(SEED, "assign", *key))
    ).labels


def _rule_in_numpy(run: Path) -> np.ndarray:
    """The labels the README's rule gives each image from the run's saved features (its final pass) and its
    RUN/assigner.pt, computed here in float64 from the rule's definition, none of the package's code:
    DeepCluster the nearest centroid (squared L2) of the PCA-whitened features, DeeperCluster the nearest
    super-centroid then the nearest of its sub-centroids, SeLa per head argmax(lam * log p + log beta)."""
    features = np.load(run / "features.npy").astype(np.float64)
    saved = RunDir(run).read_assigner()
    method, state = saved["method"], saved["state"]

    def nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        distances = ((points[:, None, :] - centroids[None].astype(np.float64)) ** 2).sum(axis=2)
        return np.argmin(np.where(np.isnan(distances), np.inf, distances), axis=1)

    if method == "sela":
        per_head = features.reshape(len(features), len(state["log_beta"]), -1)
        scores = state["lam"] * per_head + state["log_beta"][None].astype(np.float64)
        return np.argmax(scores, axis=2)
    points = (features - state["pca_mean"]) @ state["pca_matrix"].T.astype(np.float64)
    if state["pca_l2"]:
        points /= np.linalg.norm(points, axis=1, keepdims=True)
    if method == "deepcluster":
        return nearest(points, state["centroids"])
    supers = nearest(points, state["super_centroids"])
    k_sub = len(state["centroids"]) // len(state["super_centroids"])
    labels = np.empty(len(points), dtype=np.int64)
    for row, s in enumerate(supers):
        labels[row] = (
            s * k_sub + nearest(points[row : row + 1], state["centroids"][s * k_sub : (s + 1) * k_sub])[0]
        )
    return labels


def _labels_csv(run: Path) -> np.ndarray:
    """labels.csv's label columns, [N] for one."""
    table = RunDir(run).read_labels()
    return table.labels[:, 0] if table.labels.shape[1] == 1 else table.labels


def test_process_batches_together_are_the_batch() -> None:
    epoch_sample = np.random.default_rng(0).permutation(1000)
    for world in (1, 2, 4):
        for step in (0, 3):
            parts = [
                epoch_sample[Processes(rank=r, world_size=world).batch_part(step, 64)] for r in range(world)
            ]
            np.testing.assert_array_equal(np.concatenate(parts), epoch_sample[step * 64 : (step + 1) * 64])
    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_deepcluster_with_distributed_kmeans_resumes_exactly(data: Path, tmp_path: Path) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    done = _train(data, whole, "--distributed-kmeans")
    _check_complete(whole, 2, done)
    # The distributed k-means (PCA and Lloyd over the processes' shards) is the single-process torch k-means.
    last = _labels_csv(whole)
    np.testing.assert_array_equal(last, _rule_in_numpy(whole))  # the nearest centroid, by brute force here
    np.testing.assert_array_equal(last, _single_process_labels(whole, kmeans_backend="torch"))
    assert np.bincount(last, minlength=8).min() >= 1

    # The run as a kill in its second epoch leaves it: its last checkpoint (kept as previous.pt) is the one written
    # right after epoch 1's labels (and labels/epoch_001.npy, written before it); the rest comes later.
    shutil.copytree(whole, broken)
    os.replace(broken / "checkpoints/previous.pt", broken / "checkpoints/last.pt")
    loop = load_checkpoint(broken / "checkpoints/last.pt")["loop"]
    assert (loop["epoch"], loop["step"], loop["updates_done"]) == (1, 0, 2)
    for later in ("labels.csv", "features.npy", "assigner.pt"):
        (broken / later).unlink()
    torchrun(["--resume", str(broken), "--no-progress"], tmp_path)
    assert_same_run(whole, broken)  # every checkpoint key and tensor (both processes' RNG states), the labels


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("sela", ["--set", "sela.heads=2"]),
        ("deepercluster", ["--set", "deepercluster.super_clusters=2", "--set", "cluster.recluster_every=1"]),
        pytest.param("deepcluster", ["--clustering", "pic"], id="deepcluster-pic"),  # classes: those found
    ],
)
def test_method_on_two_processes_agrees_with_one(
    data: Path, tmp_path: Path, method: str, extra: list[str]
) -> None:
    run = tmp_path / method
    done = _train(data, run, "--method", method, *extra)
    _check_complete(run, 2, done)
    # Values extracted shard by shard and gathered, then assigned by the main process: the single-process labels,
    # which follow the method's rule from the assigner the run kept (checked here in NumPy).
    np.testing.assert_array_equal(_labels_csv(run), _single_process_labels(run))
    np.testing.assert_array_equal(_labels_csv(run), _rule_in_numpy(run))


def test_a_single_process_run_sets_up_nothing_distributed(data: Path, tmp_path: Path) -> None:
    assert "WORLD_SIZE" not in os.environ
    trainer = Trainer(small_config(data, tmp_path / "run", run={"epochs": 1}, optim={"epoch_size": 64}))
    result = trainer.fit()
    assert not torch.distributed.is_initialized()
    assert not trainer.procs.distributed and trainer.procs.is_main
    assert trainer.train_backbone is trainer.backbone and trainer.train_heads is trainer.heads
    assert len(result.history) == 1


@pytest.mark.parametrize("method", ["deepcluster-v2", "sela-v2"])
def test_v2_on_two_processes_fills_one_bank_and_agrees_with_one(
    data: Path, tmp_path: Path, method: str
) -> None:
    run, section = tmp_path / method, method.replace("-", "_")
    done = _train(
        data, run, "--method", method,  # alexnet_small_gap: large 16 px and small 8 px crops
        *[f"--set={section}.{key}" for key in ("n_sets=2", "n_small=2", "hidden=32", "out_dim=16")],
        f"--set={section}.labels_from=bank", f"--set={section}.final_labels=bank",  # no pass after the first
    )  # fmt: skip
    _check_complete(run, 2, done)
    config = load_config(run / "config.yaml")
    checkpoint = load_checkpoint(run / "checkpoints/last.pt")
    bank = checkpoint["method"]["bank"].numpy()
    first = np.load(run / "features.npy")  # the first labels' projections: the bank before any step
    one = build_method(config)
    samples = [
        one.sample(np.zeros((N_IMAGES, 2)), EPOCH_SIZE, seed=derive_seed(SEED, "sampler", e)) for e in (0, 1)
    ]
    trained = np.unique(samples)
    rank_1 = np.unique(
        [sample[BATCH // 2 : BATCH] for sample in samples]
    )  # each epoch's first batch, 2nd half
    untouched = np.setdiff1d(np.arange(N_IMAGES), trained)
    assert len(untouched) and len(rank_1)
    np.testing.assert_array_equal(bank[:, untouched], np.stack([first[untouched]] * 2))
    assert not np.isclose(bank[:, rank_1], first[rank_1]).all(axis=2).any(), "rank 1's crops reach the bank"
    # The last labels, made from the gathered bank by the main process, are one process's labels of that bank.
    heads = one.build_heads(
        build_backbone(
            config.model.arch, sobel=config.model.sobel, input_size=config.data.input_size
        ).feature_dim,
        Assignment(np.zeros(N_IMAGES, dtype=np.int64), n_classes=8),
        torch.Generator(),
    )
    heads.load_state_dict(checkpoint["heads"])
    one.load_state_dict(checkpoint["method"])
    alone = one.assign_stored(heads, derive_seed(SEED, "assign", "final", 2), last=True)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert history[1]["label_updates"] == 1 and history[1]["seconds_extract"] == 0  # no pass over the data
    np.testing.assert_array_equal(_labels_csv(run), alone.labels)  # the final labels, from the bank too
