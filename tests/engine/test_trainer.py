"""The whole DeepCluster loop on a few hundred tiny images: run directory, exact resume, errors, top-layer reset."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from deepcluster import load_config
from deepcluster.api import resume, train
from deepcluster.config import ConfigError
from deepcluster.data.sources import DataError
from deepcluster.engine.loop import Trainer
from deepcluster.engine.state import TrainingDiverged
from deepcluster.models import ClassifierHead
from deepcluster.seeding import derive_seed, torch_generator
from deepcluster.storage import RunDir, load_checkpoint
from synthetic import SIZE, assert_same_run, pattern_images, small_config, write_pattern_npz

METRIC_KEYS = {"epoch", "loss", "kmeans_loss", "nmi_prev", "nmi_true", "ari_true", "n_empty", "seconds"}


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("data") / "patterns.npz")


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


# ---------------------------------------------------------------- the whole loop on a folder


def write_folder(root: Path, n: int = 200) -> None:
    images, labels = pattern_images(n, seed=1)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"img_{i:04d}.png")
    (root / "class_0" / "corrupt.png").write_bytes(b"this is not a png at all")
    whole = (root / "class_1" / "img_0001.png").read_bytes()
    (root / "class_1" / "truncated.png").write_bytes(whole[: len(whole) // 3])


def test_two_epochs_on_a_folder_write_the_whole_run_directory(tmp_path: Path) -> None:
    write_folder(tmp_path / "images")
    out = tmp_path / "run"
    result = train(small_config(tmp_path / "images", out, model={"arch": "alexnet_small"}))  # FC layers

    # Corrupt and truncated files are reported by path and skipped; the run goes on with the rest.
    skipped = (out / "skipped.txt").read_text()
    assert "class_0/corrupt.png" in skipped and "class_1/truncated.png" in skipped
    assert len(result.labels) == 200 and len(result.indices) == 200

    config = load_config(out / "config.yaml")
    assert config.data.input_size == SIZE and config.model.arch == "alexnet_small"
    assert config.cluster.k == 8 and config.run.epochs == 2

    # Each epoch's record describes the labels assigned at its start (labels/epoch_NNN.npy), measured here by
    # scikit-learn against the images' true kinds (their folders, from the names labels.csv gives)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    labels = [np.load(out / "labels" / f"epoch_{e:03d}.npy") for e in range(2)]
    names = [row["image"] for row in csv.DictReader((out / "labels.csv").open())]
    true = np.array([int(name.split("/")[0].removeprefix("class_")) for name in names])
    for record, assigned in zip(records, labels, strict=True):
        assert set(record) >= METRIC_KEYS
        assert math.isfinite(record["loss"]) and record["loss"] > 0
        sizes = np.bincount(assigned, minlength=8)
        assert record["n_clusters"] == np.count_nonzero(sizes) == 8  # no empty cluster reaches training
        assert (record["smallest"], record["largest"]) == (sizes.min(), sizes.max())
        assert isinstance(record["n_empty"], int)  # those k-means left empty before they were filled
        assert record["nmi_true"] == pytest.approx(normalized_mutual_info_score(true, assigned), abs=1e-12)
        assert record["ari_true"] == pytest.approx(adjusted_rand_score(true, assigned), abs=1e-12)
        assert record["seconds"] > 0
    assert records[0]["nmi_prev"] is None
    assert records[1]["nmi_prev"] == pytest.approx(
        normalized_mutual_info_score(labels[0], labels[1]), abs=1e-12
    )

    with (out / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 200
    assert rows[0]["image"].startswith("class_0/") and rows[-1]["image"].startswith("class_3/")
    assert [int(r["cluster"]) for r in rows] == result.labels.tolist()
    assert not any("corrupt" in r["image"] or "truncated" in r["image"] for r in rows)

    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
    assert checkpoint["loop"]["epoch"] == 2 and checkpoint["loop"]["step"] == 0


def test_save_features_writes_the_last_clustering_features(npz_data: Path, tmp_path: Path) -> None:
    config = small_config(npz_data, tmp_path / "run", run={"epochs": 1, "save_features": True})
    train(config)
    features = np.load(tmp_path / "run" / "features.npy")
    assert features.shape == (160, 256) and np.isfinite(features).all()  # alexnet_small_gap's conv5


# ---------------------------------------------------------------- exact resume


class Interrupt(Exception):
    """Stands for a kill: raised from the step callback, after which nothing more is written."""


@pytest.fixture(scope="module")
def unbroken_run(npz_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unbroken") / "run"
    train(small_config(npz_data, out))
    return out


@pytest.mark.parametrize(
    "kill_at", [(1, 3), (0, 2), (1, 0)], ids=["mid-epoch", "at-a-checkpoint", "epoch-start"]
)
def test_resume_after_a_kill_reaches_the_same_weights_and_labels(
    npz_data: Path, unbroken_run: Path, tmp_path: Path, kill_at: tuple[int, int]
) -> None:
    out = tmp_path / "run"
    kill_epoch, kill_step = kill_at

    def kill(trainer: Trainer) -> None:
        if (trainer.state.epoch, trainer.state.step) == (kill_epoch, kill_step + 1):
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(small_config(npz_data, out), on_step=kill).fit()
    stopped = load_checkpoint(out / "checkpoints" / "last.pt")["loop"]
    assert stopped["epoch"] == kill_epoch
    resume(out)
    assert_same_run(unbroken_run, out)


def test_runs_with_the_same_seed_agree_and_another_seed_differs(
    npz_data: Path, unbroken_run: Path, tmp_path: Path
) -> None:
    again = train(small_config(npz_data, tmp_path / "again"))
    assert np.array_equal(again.labels, RunDir(unbroken_run).read_labels().labels[:, 0])
    other = train(small_config(npz_data, tmp_path / "other", run={"seed": 4, "epochs": 1}))
    assert not np.array_equal(other.labels, np.load(unbroken_run / "labels" / "epoch_000.npy"))


def test_resume_can_extend_a_finished_run(npz_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(small_config(npz_data, out, run={"epochs": 1}))
    result = resume(out, epochs=2)
    assert [r["epoch"] for r in result.history] == [0, 1]
    assert load_config(out / "config.yaml").run.epochs == 2


# ---------------------------------------------------------------- top layer


def test_every_clustering_gets_a_fresh_top_layer(npz_data: Path, tmp_path: Path) -> None:
    config = small_config(npz_data, tmp_path / "run", run={"checkpoint_every": 0})
    seen: dict[int, tuple[int, torch.Tensor]] = {}
    last_weight: dict[int, torch.Tensor] = {}

    def watch(trainer: Trainer) -> None:
        weight = trainer.heads.linear.weight.detach().clone()
        seen.setdefault(trainer.state.epoch, (id(trainer.heads), weight))
        last_weight[trainer.state.epoch] = weight

    Trainer(config, on_step=watch).fit()
    assert seen[0][0] != seen[1][0]
    fresh = ClassifierHead(256, 8, generator=torch_generator(derive_seed(3, "heads", 1))).linear.weight
    # After one SGD step the new head is still next to its fresh initialisation, far from the old head.
    assert (seen[1][1] - fresh).norm() < 0.1 * (last_weight[0] - fresh).norm()
    assert 0.008 < float(fresh.detach().std()) < 0.012


# ---------------------------------------------------------------- errors


def test_k_larger_than_the_number_of_images_is_refused_at_start(npz_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--k 500 is larger than the number of images \(160\)"):
        train(small_config(npz_data, tmp_path / "run", cluster={"k": 500}))


def test_unknown_architecture_is_named(npz_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="alexnet_tiny"):
        train(small_config(npz_data, tmp_path / "run", model={"arch": "alexnet_tiny"}))


def test_missing_and_empty_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        train(small_config(tmp_path / "nowhere", tmp_path / "run"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        train(small_config(tmp_path / "empty", tmp_path / "run2"))


def test_unwritable_output_folder_is_named(npz_data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="--out .*cannot write there"):
        train(small_config(npz_data, blocker / "run"))


def test_a_new_run_refuses_to_overwrite_an_existing_one(npz_data: Path, unbroken_run: Path) -> None:
    with pytest.raises(ConfigError, match="already exists.*--resume"):
        train(small_config(npz_data, unbroken_run))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
    npz_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = small_config(npz_data, out, optim={"lr": 1e12}, run={"epochs": 1, "checkpoint_every": 1})
    with pytest.raises(TrainingDiverged, match=r"NaN or infinite|loss became .*Lower --lr"):
        train(config)
    checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")  # intact, readable, and finite
    assert checkpoint["loop"]["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert np.load(out / "labels" / "epoch_000.npy").shape == (160,)


def test_a_time_budget_stops_before_an_epoch_that_would_overrun_it(npz_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = small_config(npz_data, out, run={"epochs": 3, "max_minutes": 0.001, "checkpoint_every": 0})
    result = train(config)
    assert [r["epoch"] for r in result.history] == [
        0
    ]  # the first epoch always runs; the second would overrun
    assert (out / "labels.csv").is_file()
    with pytest.raises(ConfigError, match="run.max_minutes"):
        train(small_config(npz_data, tmp_path / "other", run={"max_minutes": 0}))


def test_a_memory_mapped_image_cache_gives_the_same_run_and_is_removed(
    npz_data: Path, unbroken_run: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    seen: list[bool] = []

    def look(trainer: Trainer) -> None:
        seen.append((cache / "decoded-run.npy").is_file())

    config = small_config(npz_data, tmp_path / "run")
    config.data.cache, config.data.cache_dir = "disk", str(cache)
    Trainer(config, on_step=look).fit()
    assert seen and all(seen)
    assert not (cache / "decoded-run.npy").exists()
    assert_same_run(unbroken_run, tmp_path / "run", settings_may_differ=("data.cache", "data.cache_dir"))
