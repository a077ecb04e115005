"""Options the v2 methods brought to every method: LARS, learning-rate warm-up, method defaults under presets,
the online k-NN monitor, the global-pooling AlexNet, and progress bars on terminals only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster import preset_config
from deepcluster.api import train
from deepcluster.config import OptimConfig, apply_overrides
from deepcluster.data.decode import decode_images
from deepcluster.data.sources import open_source
from deepcluster.data.views import ClusterView
from deepcluster.engine.optimizers import LARS, lr_factor, make_optimizer
from deepcluster.models import build_backbone, takes_any_input_size
from deepcluster.seeding import derive_seed
from synthetic import small_config, weighted_knn_reference, write_pattern_npz


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("options-data") / "patterns.npz")


def test_a_lars_step_is_the_trust_ratio_times_the_sgd_step() -> None:
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = LARS([weight, bias], lr=0.1, momentum=0.9, weight_decay=0.5, eta=0.02)
    weight.grad, bias.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    optimizer.step()
    update = torch.tensor([[0.0, 1.0]]) + 0.5 * torch.tensor([[3.0, 4.0]])  # grad + wd * w
    trust = 0.02 * 5.0 / float(update.norm())
    torch.testing.assert_close(weight.data, torch.tensor([[3.0, 4.0]]) - 0.1 * trust * update)
    torch.testing.assert_close(bias.data, torch.tensor([1.0 - 0.1 * 2.0]))  # 1-d: plain SGD, no decay
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    assert len(make_optimizer("sgd", [weight, frozen], 0.1, 0.9, 0.0).param_groups[0]["params"]) == 1


def test_warm_up_then_cosine() -> None:
    optim = OptimConfig(warmup_epochs=1.0)
    factors = [lr_factor(optim, 2, 5, epoch, step) for epoch in range(2) for step in range(5)]
    assert factors[:5] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])  # linear from 0 over epoch 0
    assert factors[5] == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.5)))  # then the cosine of the whole run
    assert all(a > b for a, b in zip(factors[5:], factors[6:], strict=False))


def test_a_method_s_starting_settings_sit_under_the_preset_and_the_user_s() -> None:
    v2 = preset_config("default", method="deepcluster-v2")
    assert v2.method == "deepcluster-v2" and v2.optim.weight_decay == 1e-6 and not v2.model.sobel
    assert v2.augment.color_jitter == 0.8 and v2.augment.jitter_prob == 0.8
    assert (
        preset_config("default", method="deepcluster").optim.weight_decay == 1e-5
    )  # DeepCluster keeps its own
    paper = preset_config("paper", method="deepcluster-v2")
    assert paper.augment.color_jitter == 0.0  # the preset wins over the method's defaults
    mine = apply_overrides(v2, {"optim": {"weight_decay": 1e-4}})
    assert mine.optim.weight_decay == 1e-4  # and the user's own settings over both


def test_the_knn_monitor_is_the_k_nn_of_the_embedding_on_its_sample(npz_data: Path, tmp_path: Path) -> None:
    # fp32: the expected value below is computed in fp32 (under bf16 one neighbour can change places)
    run = {"epochs": 1, "knn_monitor": 100, "precision": "fp32"}
    result = train(small_config(npz_data, tmp_path / "run", run=run))
    # the pattern archive has labels: the monitor ran, on a fixed sample of 100 of the 160 images
    knn = result.history[0]["knn_true"]
    config = result.config
    source = open_source(str(npz_data))
    images = decode_images(source, config.data.resize, inner_size=config.data.input_size).images
    rows = np.sort(np.random.default_rng(_knn_seed(config)).choice(160, size=100, replace=False))
    view = ClusterView(config.data.input_size, config.data.mean, config.data.std)
    with torch.no_grad():
        result.backbone.eval()
        features = result.backbone(view(images[torch.as_tensor(rows)])).numpy()
    expected = weighted_knn_reference(features, np.asarray(source.labels)[rows], k=20, temperature=0.07)
    assert knn == pytest.approx(expected, abs=1e-12)  # brute force in NumPy (tests/synthetic.py)
    quiet = train(small_config(npz_data, tmp_path / "off", run={"epochs": 1, "knn_monitor": 0}))
    assert "knn_true" not in quiet.history[0]


def _knn_seed(config) -> int:
    return derive_seed(config.run.seed, "knn")


def test_the_global_pooling_alexnet_takes_crops_of_any_size() -> None:
    net = build_backbone("alexnet_small_gap", sobel=False, input_size=32)
    assert net.feature_dim == 256 and takes_any_input_size("alexnet_small_gap")
    assert not takes_any_input_size("alexnet_small") and takes_any_input_size("resnet18_small")
    assert net(torch.randn(2, 3, 32, 32)).shape == net(torch.randn(2, 3, 16, 16)).shape == (2, 256)


def test_a_redirected_log_gets_no_progress_bars(npz_data: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "deepcluster", "train", "--data", str(npz_data), "--out", str(tmp_path / "run"),
               "--method", "deepcluster", "--arch", "alexnet_small_gap", "--k", "8", "--epochs", "1",
               "--batch-size", "32", "--set", "cluster.pca_dim=16",
               "--set", "run.report=false"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # stderr is a pipe, not a TTY
    assert done.returncode == 0, done.stderr
    assert "epoch 0 done" in done.stderr  # one line per epoch stays
    assert "it/s" not in done.stderr and "batch/s" not in done.stderr and "img/s" not in done.stderr
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 0
