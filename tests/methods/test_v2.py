"""DeepCluster-v2 and SeLa-v2: spherical k-means, multi-crop, prototypes, the memory bank, the loss, whole runs
and exact resume, on small real computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster.api import resume
from deepcluster.cli import main
from deepcluster.data.views import MultiCropView, TrainView, sample_crop_boxes
from deepcluster.engine.loop import Trainer
from deepcluster.methods import METHODS
from deepcluster.methods.v2 import v2_loss
from deepcluster.models import PrototypeHead, build_backbone
from deepcluster.models.backbone import Backbone
from deepcluster.storage import RunDir, load_checkpoint
from synthetic import forward_calls, small_config, weighted_knn_reference, write_pattern_npz

V2_METHODS = ("deepcluster-v2", "sela-v2")


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("v2-data") / "patterns.npz")


def v2_config(method: str, data: Path, out: Path, **sections: dict):
    """Seconds per run (`small_config` with 16 px alexnet_small_gap, 2 sets, 2 large + 2 small crops, labels from
    the bank)."""
    overrides = {
        "optim": {"lr": 0.05},
        method.replace("-", "_"): {
            "n_sets": 2,
            "n_small": 2,
            "hidden": 64,
            "out_dim": 16,
            "labels_from": "bank",
        },
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return small_config(data, out, method=method, **overrides)


# ---------------------------------------------------------------- crops, heads, loss
def test_multi_crop_gives_large_then_small_crops_of_their_scales() -> None:
    images = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    images[:, :, :16] = 0  # top half dark: a crop's mean tells how much of the top it covers
    large = TrainView(32, (0, 0, 0), (1, 1, 1), scale=(0.14, 1.0), flip=False)
    small = TrainView(16, (0, 0, 0), (1, 1, 1), scale=(0.05, 0.14), flip=False)
    crops = MultiCropView(large, small, n_large=2, n_small=3)(images, torch.Generator().manual_seed(0))
    assert [tuple(c.shape) for c in crops] == [(64, 3, 32, 32)] * 2 + [(64, 3, 16, 16)] * 3
    assert not torch.equal(crops[0], crops[1])  # independent draws
    boxes = sample_crop_boxes(2000, 32, 32, (0.05, 0.14), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (32 * 32)
    assert float(area.min()) > 0.04 and float(area.max()) < 0.16 and 0.07 < float(area.mean()) < 0.12


def test_prototypes_get_no_gradient_and_equal_the_normalised_centroids() -> None:
    head = PrototypeHead(12, k=5, n_sets=2, hidden=8, out_dim=4, generator=torch.Generator().manual_seed(0))
    centroids = torch.randn(2, 5, 4)
    head.set_prototypes(centroids)
    torch.testing.assert_close(head.prototypes.data, torch.nn.functional.normalize(centroids, dim=-1))
    z, scores = head(torch.randn(6, 12))
    assert z.shape == (6, 4) and scores.shape == (6, 2, 5)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(6))
    scores.sum().backward()
    assert head.prototypes.grad is None and not head.prototypes.requires_grad
    assert head.projection[0].weight.grad is not None


def test_the_loss_on_a_hand_computed_example() -> None:
    scores = torch.tensor([[[[0.9, 0.1]]], [[[0.2, 0.4]]]])  # 2 crops, 1 image, 1 set, k = 2
    targets = torch.tensor([[0]])
    by_hand = np.mean(
        [-np.log(np.exp(9) / (np.exp(9) + np.exp(1))), -np.log(np.exp(2) / (np.exp(2) + np.exp(4)))]
    )
    assert float(v2_loss(scores, targets, 0.1)) == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        v2_loss(scores, torch.tensor([[0, 1]]), 0.1)


def test_crops_of_two_sizes_pass_a_resnet_in_one_step() -> None:
    config = v2_config("deepcluster-v2", Path("unused"), Path("unused"), model={"arch": "resnet18_small"})
    config.data.input_size = 16
    method = METHODS.build(config)
    view = method.train_view()
    assert view.large.input_size == 16 and view.small.input_size == 8
    backbone = build_backbone("resnet18_small", sobel=False, input_size=16)
    heads = PrototypeHead(backbone.feature_dim, 8, 2, hidden=16, out_dim=4, generator=torch.Generator())
    crops = view(torch.randint(0, 255, (3, 3, 16, 16), dtype=torch.uint8), torch.Generator().manual_seed(0))
    labels = torch.zeros(3, 2, dtype=torch.long)
    (z, scores), targets = method.forward(backbone, heads, crops, labels, torch.Generator())
    assert z.shape == (2, 3, 4) and scores.shape == (4, 3, 2, 8) and targets is labels


# ---------------------------------------------------------------- whole runs
@pytest.fixture(scope="module", params=V2_METHODS)
def v2_run(request: pytest.FixtureRequest, npz_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The run, its result and trainer, the bank after each step, and every forward call of the backbone with
    where each step ended among them."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    seen: list[tuple[np.ndarray, torch.Tensor]] = []
    steps_end: list[int] = []

    def watch(trainer: Trainer) -> None:  # after each step: the rows trained on and the bank
        seen.append(trainer.method.bank.clone())
        steps_end.append(len(calls))

    trainer = Trainer(v2_config(request.param, npz_data, out, run={"knn_monitor": 100}), on_step=watch)
    with forward_calls(Backbone) as calls:
        result = trainer.fit()
    return request.param, out, result, trainer, seen, (calls, steps_end)


def test_a_v2_run_writes_every_set_s_labels(v2_run) -> None:
    method, out, result, trainer, _, (calls, steps_end) = v2_run
    assert result.labels.shape == (160, 2)
    header = (out / "labels.csv").read_text().splitlines()[0].split(",")
    assert header[2:4] == ["cluster", "cluster_h1"]
    assert [r["epoch"] for r in result.history] == [0, 1]
    assert all(np.isfinite(r["loss"]) for r in result.history)
    # labels at each epoch's start (the first from a pass, the second from the bank, no extraction); labels.csv
    # from a cluster-view pass of the trained network after the last step (final_labels=pass). The images the
    # backbone saw in eval mode between the 5 steps of each epoch say which passes ran:
    assert [r["label_updates"] for r in result.history] == [1, 1]

    def eval_rows(start: int, stop: int | None) -> int:
        return sum(rows for training, rows, _ in calls[start:stop] if not training)

    # a first layer from the data (model.first_conv, DeepCluster-v2's default: patches) sees min(N, 2,048) images
    first_layer = 160 if trainer.config.model.first_conv != "random" else 0
    assert (
        eval_rows(0, steps_end[0]) == first_layer + 160
    )  # then epoch 0's labels: a pass over the 160 images
    assert (
        eval_rows(steps_end[4], steps_end[5]) == 100
    )  # the k-NN monitor's 100 only: epoch 1's from the bank
    assert eval_rows(steps_end[9], None) == 100 + 160  # the monitor, then labels.csv's pass
    assert result.history[0]["seconds_extract"] > 0
    assert result.history[1]["seconds_extract"] == 0.0  # no pass: nothing is timed (exactly zero)
    bank = load_checkpoint(out / "checkpoints" / "last.pt")["method"]["bank"]
    assert not torch.equal(bank[0], bank[1])  # the two large crops' projections, written by the training pass
    assert np.array_equal(result.labels, RunDir(out).read_labels().labels)
    # knn_true: the weighted k-NN, by brute force here, of the embedding the monitor computed last
    embedding = torch.cat([output for training, _, output in calls[steps_end[9] :] if not training])[:100]
    rows = trainer.monitor.rows
    expected = weighted_knn_reference(embedding.numpy(), (np.arange(160) % 4)[rows], k=20, temperature=0.07)
    assert result.history[-1]["knn_true"] == pytest.approx(expected, abs=1e-12)


def test_the_bank_holds_the_projections_of_the_images_trained_on(v2_run) -> None:
    method_name, out, result, trainer, seen, _ = v2_run
    method = trainer.method
    sample = method.sample(
        np.zeros((160, 2)), trainer.steps_per_epoch * trainer.batch_size, trainer.seed("sampler", 1)
    )
    step_rows = sample[: trainer.batch_size]  # the first step of the last epoch
    before, after = seen[trainer.steps_per_epoch - 1], seen[trainer.steps_per_epoch]
    changed = torch.nonzero((before != after).any(dim=2).any(dim=0)).flatten().numpy()
    assert sorted(changed) == sorted(step_rows)  # exactly the step's images were written
    torch.testing.assert_close(after[:, changed].norm(dim=2), torch.ones(2, len(changed)))
    if method_name == "deepcluster-v2":
        centroids = load_checkpoint(out / "checkpoints" / "last.pt")["heads"]["prototypes"]
        torch.testing.assert_close(centroids.norm(dim=2), torch.ones(2, 8))


def test_resume_after_a_kill_mid_epoch_reaches_the_same_run(npz_data: Path, v2_run, tmp_path: Path) -> None:
    method, unbroken, *_ = v2_run
    out = tmp_path / "run"

    class Interrupt(Exception):
        pass

    def kill(trainer: Trainer) -> None:
        if (trainer.state.epoch, trainer.state.step) == (1, 3):  # one step after the last checkpoint
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(v2_config(method, npz_data, out), on_step=kill).fit()
    resume(out)
    a, b = (
        load_checkpoint(unbroken / "checkpoints" / "last.pt"),
        load_checkpoint(out / "checkpoints" / "last.pt"),
    )
    for part in ("model", "heads"):
        assert all(torch.equal(a[part][key], b[part][key]) for key in a[part]), part
    assert torch.equal(a["method"]["bank"], b["method"]["bank"])
    assert (unbroken / "labels.csv").read_text() == (out / "labels.csv").read_text()


def test_v2_methods_from_the_command_line(
    npz_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["train", "--method", "sela-v2", "--data", str(npz_data), "--out", str(tmp_path / "run"), "--k", "8",
            "--epochs", "1", "--batch-size", "32", "--arch", "alexnet_small", "--set", "sela_v2.n_small=0",
            "--set", "run.report=false", "--no-progress", "-q"]  # fmt: skip
    assert main(argv) == 0 and "nmi_true=" in capsys.readouterr().out
    bad = ["train", "--method", "deepcluster-v2", "--data", str(npz_data), "--set", "deepcluster_v2.n_sets=0",
           "--out", str(tmp_path / "bad"), "--no-progress"]  # fmt: skip
    assert main(bad) == 2 and "deepcluster_v2.n_sets=0" in capsys.readouterr().err


def test_by_default_every_label_update_reads_a_pass_and_no_bank_is_kept(
    npz_data: Path, tmp_path: Path
) -> None:
    argv = ["train", "--data", str(npz_data), "--out", str(tmp_path / "run"), "--k", "8", "--epochs", "2",
            "--batch-size", "32", "--set", "deepcluster_v2.n_sets=2", "--set", "deepcluster_v2.hidden=32",
            "--set", "run.report=false", "--no-progress", "-q"]  # fmt: skip
    assert main(argv) == 0  # no --method: DeepCluster-v2
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["label_updates"] for r in history] == [
        1,
        1,
    ]  # at each epoch's start (labels.csv: one more pass)
    assert all(r["seconds_extract"] > 0 for r in history)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["config"]["method"] == "deepcluster-v2" and checkpoint["method"]["bank"] is None
