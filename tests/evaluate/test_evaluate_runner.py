"""`deepcluster evaluate` on a tiny trained run and on a checkpoint in the released DeepCluster layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from deepcluster.api import train
from deepcluster.cli import main
from deepcluster.evaluate.runner import EvalConfig, evaluate
from deepcluster.models import build_backbone
from deepcluster.storage import RunDir
from synthetic import evaluation_knn_reference, pattern_images, small_config, write_pattern_npz


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    data = write_pattern_npz(root / "patterns.npz", n=200)
    out = root / "run"
    train(small_config(data, out, run={"checkpoint_every": 0}))
    return out


def test_evaluating_a_run_scores_trained_and_random_networks_and_its_clusters(tiny_run: Path) -> None:
    config = EvalConfig(str(tiny_run), knn_ks=(5, 20), probe_epochs=1, probe_batch_size=32, progress=False)
    results = evaluate(config)
    for name in ("trained", "random_init"):
        scores = results["networks"][name]
        assert set(scores) >= {"knn5", "knn20", "probe_conv1", "probe_conv5", "probe_best"}
        probes = {
            key: value for key, value in scores.items() if key.startswith("probe_") and key != "probe_best"
        }
        assert scores["probe_best"] == max(probes.values())
        # every score is a share of the 40 held-out images (a fifth of 200) classified right
        assert all((value * 40) == pytest.approx(round(value * 40), abs=1e-9) for value in scores.values())
    images, kinds = pattern_images(200)  # the run's data
    trained = {key: value for key, value in results["networks"]["trained"].items() if key.startswith("knn")}
    assert trained == evaluation_knn_reference(tiny_run, images, kinds, config)  # brute force, here
    # Four well-separated patterns: a random Sobel network's embedding already sorts them far above chance.
    assert results["networks"]["random_init"]["knn5"] > 0.5
    clustering = results["clustering"]
    labels = RunDir(tiny_run).read_labels().labels[:, 0]  # labels.csv: the trained network's clusters
    true = np.arange(200) % 4
    assert clustering["metrics"]["nmi"] == pytest.approx(
        normalized_mutual_info_score(true, labels), abs=1e-12
    )
    assert sum(row["size"] for row in clustering["clusters"]) == 200
    assert [row["epoch"] for row in clustering["stability"]] == [1]
    written = json.loads((tiny_run / "evaluation.json").read_text())
    assert written["networks"]["trained"]["knn5"] == results["networks"]["trained"]["knn5"]


def test_the_same_evaluation_gives_the_same_numbers(tiny_run: Path, tmp_path: Path) -> None:
    def once(name: str) -> dict:
        config = EvalConfig(
            str(tiny_run), knn_ks=(5,), probe_epochs=1, probe_batch_size=32, baseline=False, progress=False,
            out=str(tmp_path / name),
        )  # fmt: skip
        return evaluate(config)["networks"]["trained"]

    assert once("a.json") == once("b.json")


def test_released_layout_checkpoint_is_evaluated_from_the_command_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(1)
    model = build_backbone("alexnet_small", sobel=True, input_size=16)
    state = {
        (key.replace("features.", "features.module.", 1) if key.startswith("features.") else key): value
        for key, value in model.state_dict().items()
    }
    state["top_layer.weight"], state["top_layer.bias"] = torch.zeros(8, 4096), torch.zeros(8)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": state, "arch": "alexnet_small", "epoch": 3}, path)

    data = tiny_run.parent / "patterns.npz"
    argv = ["evaluate", str(path), "--data", str(data), "--input-size", "16", "--knn-k", "5"]
    code = main([*argv, "--probe-epochs", "0", "--no-baseline", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "knn5" in printed and "trained" in printed
    written = json.loads(path.with_suffix(".evaluation.json").read_text())
    assert written["arch"] == "alexnet_small" and "loaded" in written["checkpoint_report"].lower()
    assert "probe_best" not in written["networks"]["trained"]


def test_a_target_that_is_neither_a_run_nor_a_checkpoint_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "no such run directory or checkpoint file" in capsys.readouterr().err
