"""DeepCluster with PIC (`--clustering pic`): a top layer as wide as the clusters found each epoch, the assigner's
centres, `assign` giving labels.csv, an exact resume after a real kill, and the refusals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deepcluster import load_config
from deepcluster.cli import main
from deepcluster.methods import build_method
from deepcluster.seeding import derive_seed
from deepcluster.storage import RunDir, load_checkpoint, read_header
from runs import environment, run
from synthetic import assert_same_run, write_pattern_npz

SEED, EPOCHS = 3, 2


def command(data: Path, out: Path) -> list[str]:
    """`deepcluster train` of a small DeepCluster run with PIC: 2 epochs of 4 steps, a checkpoint every 2."""
    return [
        sys.executable, "-m", "deepcluster", "train", "--method", "deepcluster", "--clustering", "pic",
        "--data", str(data), "--out", str(out), "--arch", "alexnet_small_gap", "--input-size", "16",
        "--batch-size", "32", "--epochs", str(EPOCHS), "--epoch-size", "128", "--seed", str(SEED),
        "--threads", "1", "--no-progress", "-q", "--save-features", "--set=cluster.pca_dim=16",
        "--set=run.report=false", "--set=run.checkpoint_every=2", "--set=run.knn_monitor=0",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("pic-data") / "patterns.npz")


@pytest.fixture(scope="module")
def unbroken(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pic-unbroken") / "run"
    done = run(command(data, out))
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_the_top_layer_has_as_many_outputs_as_the_epoch_s_clusters(unbroken: Path) -> None:
    history = [json.loads(line) for line in (unbroken / "metrics.jsonl").read_text().splitlines()]
    for epoch, record in enumerate(history):
        labels = np.load(RunDir(unbroken).epoch_labels(epoch))
        assert record["n_clusters"] == len(np.unique(labels)) == labels.max() + 1 > 1
        assert record["smallest"] == np.bincount(labels).min()
    checkpoint = load_checkpoint(unbroken / "checkpoints" / "last.pt")
    assert checkpoint["n_classes"] == history[-1]["n_clusters"]
    assert checkpoint["heads"]["linear.weight"].shape[0] == history[-1]["n_clusters"]
    assert load_config(unbroken / "config.yaml").cluster.algorithm == "pic"


def test_the_assigner_s_centres_are_the_members_means_and_labels_csv_the_nearest_centre(
    unbroken: Path,
) -> None:
    """The final pass's PIC clusters (recomputed from the saved features), their means in the whitened space
    (the assigner's centres), and labels.csv: each image's nearest centre, computed here in float64."""
    config = load_config(unbroken / "config.yaml")
    features = np.load(unbroken / "features.npy")
    method = build_method(config)
    final = method.assign(features, None, seed=derive_seed(SEED, "assign", "final", EPOCHS))
    state = RunDir(unbroken).read_assigner()["state"]
    points = (features - state["pca_mean"]) @ state["pca_matrix"].T.astype(np.float64)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    means = np.stack([points[final.labels == c].mean(axis=0) for c in range(final.n_classes)])
    np.testing.assert_allclose(state["centroids"], means, atol=1e-5)
    distances = ((points[:, None, :] - state["centroids"][None].astype(np.float64)) ** 2).sum(axis=2)
    table = RunDir(unbroken).read_labels()
    np.testing.assert_array_equal(table.labels[:, 0], distances.argmin(axis=1))


def test_assigning_the_training_images_gives_labels_csv(unbroken: Path, tmp_path: Path) -> None:
    out = tmp_path / "assignments.csv"
    assert main(["assign", str(unbroken), "--out", str(out), "--no-progress", "-q"]) == 0
    rows = out.read_text().splitlines()
    header = rows[0].split(",")
    got = np.array([int(row.split(",")[header.index("cluster")]) for row in rows[1:]])
    np.testing.assert_array_equal(got, RunDir(unbroken).read_labels().labels[:, 0])


def test_a_killed_run_resumes_to_the_unbroken_run(data: Path, unbroken: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    child = subprocess.Popen(command(data, out), env=environment(), stderr=subprocess.PIPE, text=True)
    checkpoint, deadline = out / "checkpoints" / "last.pt", time.monotonic() + 240
    while child.poll() is None and time.monotonic() < deadline:
        header = read_header(checkpoint) if checkpoint.is_file() else None
        if (
            header is not None and header["epoch"] == 1
        ):  # epoch 1's labels made: its own top layer is training
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "labels.csv").exists()
    again = run([sys.executable, "-m", "deepcluster", "train", "--resume", str(out), "--no-progress", "-q"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert_same_run(unbroken, out)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--method", "sela"],
            "--clustering pic: --method sela labels with kmeans only; pic is for --method ",
        ),
        (
            ["--method", "deepcluster", "--distributed-kmeans"],
            "PIC's graph of nearest neighbours needs every",
        ),
        (
            ["--method", "deepcluster", "--set=cluster.pic_nnn=160"],
            "cluster.pic_nnn=160: PIC links each image",
        ),
    ],
)
def test_what_pic_cannot_do_is_refused_before_any_work(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    arguments = ["train", "--clustering", "pic", "--data", str(data), "--out", str(tmp_path / "run"), *extra]
    assert main([*arguments, "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "--method deepcluster" in err or "sela" not in extra
    assert not (tmp_path / "run").exists()
