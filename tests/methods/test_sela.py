"""SeLa through the whole pipeline: update schedule, multi-head loss, kept heads, exact resume; label transfer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from deepcluster.api import resume, train
from deepcluster.cli import main
from deepcluster.config import ConfigError
from deepcluster.engine.loop import Trainer
from deepcluster.evaluate.runner import EvalConfig, evaluate
from deepcluster.methods.sela import default_lambda, multi_head_loss, update_steps
from deepcluster.models import MultiHead
from deepcluster.storage import load_checkpoint
from synthetic import evaluation_knn_reference, pattern_images, small_config, write_pattern_npz

HEADS = 3
SCHEDULE = [0, 1, 2, 6, 10]  # 160 images / batch 32 = 5 steps per epoch, 2 epochs, 4 quadratic updates


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("sela-data") / "patterns.npz")


def sela_config(path: Path, out: Path, **sections: dict):
    config = small_config(
        path, out, sela={"heads": HEADS, "updates": 4, **sections.pop("sela", {})}, **sections
    )
    config.method = "sela"
    return config


@pytest.fixture(scope="module")
def sela_run(npz_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sela") / "run"
    train(sela_config(npz_data, out))
    return out


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- pieces


def test_quadratic_updates_are_dense_early_and_end_at_the_last_step() -> None:
    steps = update_steps(10_000, 20, "quadratic")
    gaps = np.diff(steps)
    assert len(steps) == 20 and steps[-1] == 10_000 and steps[0] >= 1
    assert np.all(np.diff(gaps) > 0)  # each gap longer than the one before
    assert steps[9] == round(10_000 * (10 / 20) ** 2)
    linear = update_steps(10_000, 20, "linear")
    assert set(np.diff(linear)) == {500}


def test_updates_never_repeat_a_step_on_short_runs() -> None:
    steps = update_steps(5, 10, "quadratic")
    assert steps == sorted(set(steps)) and steps[0] >= 1 and steps[-1] == 5
    with pytest.raises(ValueError, match="spacing"):
        update_steps(100, 4, "cubic")


def test_multi_head_loss_is_the_mean_of_the_heads_cross_entropies() -> None:
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(6, 3, 5, generator=generator)
    targets = torch.randint(0, 5, (6, 3), generator=generator)
    by_hand = sum(torch.nn.functional.cross_entropy(outputs[:, h], targets[:, h]) for h in range(3)) / 3
    assert float(multi_head_loss(outputs, targets)) == pytest.approx(float(by_hand), rel=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        multi_head_loss(outputs, targets[:, :2])


def test_multi_head_gives_one_block_of_logits_per_head() -> None:
    heads = MultiHead(32, 7, 4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 32)
    out = heads(x)
    assert out.shape == (5, 4, 7)
    torch.testing.assert_close(
        out[:, 2], torch.relu(x) @ heads.linear.weight[14:21].T + heads.linear.bias[14:21]
    )


def test_lambda_defaults_to_ten_for_small_images() -> None:
    assert default_lambda(32) == 10.0 and default_lambda(224) == 25.0


# ---------------------------------------------------------------- a whole run


def test_a_sela_run_writes_every_head_and_its_metrics(sela_run: Path) -> None:
    history = records(sela_run)
    assert [r["label_updates"] for r in history] == [3, 2]  # steps 0, 1, 2 | 6, 10
    kinds = np.arange(160) % 4  # the images' true kinds
    for epoch, record in enumerate(history):
        labels = np.load(sela_run / "labels" / f"epoch_{epoch:03d}.npy")  # the epoch's last labels, per head
        heads = [normalized_mutual_info_score(kinds, labels[:, h]) for h in range(HEADS)]
        assert record["nmi_true_heads"] == pytest.approx(heads, abs=1e-12)  # by scikit-learn, here
        assert record["nmi_true"] == pytest.approx(heads[0], abs=1e-12)  # the first head's
        assert record["sinkhorn_loss"] > 0 and record["n_empty"] == 0
        sizes = np.stack([np.bincount(labels[:, h], minlength=8) for h in range(HEADS)])  # over every head
        assert [record["smallest"], record["largest"]] == [sizes.min(), sizes.max()]
    for record in history[1:]:
        assert len(record["nmi_prev_heads"]) == HEADS
        assert record["nmi_prev"] == pytest.approx(np.mean(record["nmi_prev_heads"]))
    with (sela_run / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["index", "image", "cluster", "cluster_h1", "cluster_h2", "true_label"]
    last = np.load(sela_run / "labels" / "epoch_001.npy")
    assert last.shape == (160, HEADS)
    assert np.array_equal(
        np.array([[int(r["cluster"]), int(r["cluster_h2"])] for r in rows]), last[:, [0, 2]]
    )
    assert not np.array_equal(last[:, 0], last[:, 1])  # heads label independently


def test_heads_are_kept_across_label_updates(npz_data: Path, tmp_path: Path) -> None:
    seen: set[int] = set()
    updates: list[int] = []

    def watch(trainer: Trainer) -> None:
        seen.add(id(trainer.heads))
        updates.append(trainer.state.updates_done)

    Trainer(sela_config(npz_data, tmp_path / "run"), on_step=watch).fit()
    assert len(seen) == 1
    # The 5th update runs after the last step, so no step sees it.
    assert updates[0] == 1 and updates[2] == 3 and max(updates) == 4


class Interrupt(Exception):
    """Stands for a kill."""


@pytest.mark.parametrize(
    "kill_at",
    [(0, 3), (1, 2), (1, 5)],
    ids=["after-an-update", "after-a-mid-epoch-update", "before-the-last"],
)
def test_resume_after_a_kill_reaches_the_same_run(
    npz_data: Path, sela_run: Path, tmp_path: Path, kill_at: tuple[int, int]
) -> None:
    out = tmp_path / "run"

    def kill(trainer: Trainer) -> None:
        if (trainer.state.epoch, trainer.state.step) == kill_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(sela_config(npz_data, out), on_step=kill).fit()
    resume(out)
    a, b = (
        load_checkpoint(sela_run / "checkpoints" / "last.pt"),
        load_checkpoint(out / "checkpoints" / "last.pt"),
    )
    for part in ("model", "heads"):
        assert all(torch.equal(a[part][key], b[part][key]) for key in a[part]), part
    assert (sela_run / "labels.csv").read_text() == (out / "labels.csv").read_text()
    assert [r["loss"] for r in records(sela_run)] == [r["loss"] for r in records(out)]


def test_the_same_seed_gives_the_same_labels(npz_data: Path, sela_run: Path, tmp_path: Path) -> None:
    again = train(sela_config(npz_data, tmp_path / "again"))
    assert np.array_equal(again.labels, np.load(sela_run / "labels" / "epoch_001.npy"))


def test_labels_can_be_computed_on_the_train_view(npz_data: Path, sela_run: Path, tmp_path: Path) -> None:
    result = train(sela_config(npz_data, tmp_path / "run", sela={"view": "train"}, run={"epochs": 1}))
    assert result.labels.shape == (160, HEADS) and result.history[0]["n_empty"] == 0


@pytest.mark.parametrize(
    "sela, fragment",
    [({"spacing": "cubic"}, "sela.spacing"), ({"heads": 0}, "sela.heads"), ({"lam": -1}, "sela.lam")],
)
def test_bad_sela_options_are_named(npz_data: Path, tmp_path: Path, sela: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Trainer(sela_config(npz_data, tmp_path / "run", sela=sela))


# ---------------------------------------------------------------- label transfer


def test_label_transfer_trains_another_architecture_on_every_head(
    npz_data: Path, sela_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "transfer"
    code = main(
        ["train", "--labels", str(sela_run / "labels.csv"), "--data", str(npz_data), "--arch", "resnet18",
         "--out", str(out), "--epochs", "1", "--batch-size", "32", "--set", "run.report=false", "--no-progress", "-q"]
    )  # fmt: skip
    assert code == 0
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["arch"] == "resnet18" and ckpt["heads"]["linear.weight"].shape[0] == HEADS * 8
    assert (out / "labels.csv").read_text() == (sela_run / "labels.csv").read_text()
    config = EvalConfig(str(out), knn_ks=(5,), probe_epochs=0, baseline=False, progress=False)
    scores = evaluate(config)
    images, kinds = pattern_images(160)
    assert scores["networks"]["trained"] == evaluation_knn_reference(out, images, kinds, config)


def test_transfer_refuses_labels_of_other_data(npz_data: Path, sela_run: Path, tmp_path: Path) -> None:
    other = write_pattern_npz(tmp_path / "fewer.npz", n=200)
    rows = (sela_run / "labels.csv").read_text().splitlines()
    config = small_config(other, tmp_path / "run", transfer={"labels": str(sela_run / "labels.csv")})
    config.method = "transfer"
    with pytest.raises(ConfigError, match="has no label for image"):
        train(config)
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join([rows[0], rows[1], "2,2,x,1,1,0"]))
    config.transfer.labels = str(broken)
    with pytest.raises(ConfigError, match="line 3"):
        train(config)


def test_labels_and_another_method_do_not_mix(npz_data: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", "--labels", "x.csv", "--method", "sela", "--data", str(npz_data), "--no-progress"])
    assert code == 2 and "--labels" in capsys.readouterr().err


def test_memory_mapped_outputs_give_the_same_run_and_are_removed(
    npz_data: Path, sela_run: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    config = sela_config(npz_data, tmp_path / "run")
    config.data.memory_limit_gb, config.data.cache_dir = 1e-6, str(cache)
    result = train(config)
    assert np.array_equal(result.labels, np.load(sela_run / "labels" / "epoch_001.npy"))
    assert "memory-mapped" in (tmp_path / "run" / "train.log").read_text()
    assert not any(cache.iterdir())


def test_method_sela_from_the_command_line(npz_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main(
        ["train", "--method", "sela", "--data", str(npz_data), "--out", str(out), "--k", "8", "--epochs", "1",
         "--batch-size", "32", "--set", "sela.heads=2", "--set", "run.report=false", "--no-progress", "-q"]
    )  # fmt: skip
    assert code == 0 and "nmi_true=" in capsys.readouterr().out
    with (out / "labels.csv").open() as handle:
        assert next(csv.reader(handle))[2:4] == ["cluster", "cluster_h1"]
