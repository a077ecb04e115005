"""A method is one class plus its registration: a toy method defined here trains end to end from the command
line, with its own settings section, flag, checks and help, and no edit to the config, the CLI or the engine."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepcluster.cli import build_parser, main
from deepcluster.config import ConfigError, TrainConfig, option
from deepcluster.config.options import number, whole
from deepcluster.methods import METHODS, Assignment, ExtractingMethod
from deepcluster.models import ClassifierHead
from synthetic import write_pattern_npz


@dataclass
class ToyConfig:
    """Toy: labels from the sign pattern of a few random projections of the embedding."""

    bits: int = option(3, "toy: random projections; 2^bits clusters", flag="--toy-bits", check=whole(1))
    scale: float = option(1.0, "toy: scale of the projections", check=number(0))


class Toy(ExtractingMethod):
    """Labels: which side of `bits` random hyperplanes the centred embedding lies on; head: a linear layer."""

    name = "toy"
    summary = "sign patterns of random projections (a test's method)"
    Config = ToyConfig

    @classmethod
    def fit_to_data(cls, config: TrainConfig, n_images: int, feature_dim: int | None) -> TrainConfig:
        return config  # 2^bits clusters: cluster.k plays no part

    def extract(self, backbone: nn.Module, heads: nn.Module | None, images: torch.Tensor) -> torch.Tensor:
        return backbone(images)

    def assign(self, features: np.ndarray, heads: nn.Module | None, seed: int) -> Assignment:
        toy = self.config.toy
        planes = np.random.default_rng(seed).normal(size=(features.shape[1], toy.bits)) * toy.scale
        bits = (features - features.mean(axis=0)) @ planes > 0
        labels = (bits * (1 << np.arange(toy.bits))).sum(axis=1).astype(np.int64)
        return Assignment(labels=labels, n_classes=1 << toy.bits, stats={"n_empty": 0})

    def build_heads(self, feature_dim: int, assignment: Assignment, generator: torch.Generator) -> nn.Module:
        return ClassifierHead(feature_dim, assignment.n_classes, generator=generator)


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("toy-data") / "patterns.npz")


def test_a_registered_toy_method_trains_from_the_command_line(
    npz_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--method", "toy", "--toy-bits", "2", "--data", str(npz_data), "--out", str(out)]
    argv += [
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--seed",
        "1",
        "--no-progress",
        "--set",
        "run.report=false",
    ]
    with METHODS.registered(Toy):
        assert main(argv) == 0
        assert "toy" in METHODS.names
    assert "toy" not in METHODS.names  # the registration ends with the block
    assert "nmi_true=" in capsys.readouterr().out
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1] and all(np.isfinite(r["loss"]) for r in history)
    assert all(r["n_clusters"] <= 4 for r in history)
    with (out / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 160 and {int(r["cluster"]) for r in rows} <= {0, 1, 2, 3}
    saved = (out / "config.yaml").read_text()
    assert "toy:" in saved and "bits: 2" in saved  # its section is part of the run's settings


def test_the_toy_method_s_options_are_checked_and_documented(
    npz_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with METHODS.registered(Toy):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "--toy-bits" in help_text and "toy: sign patterns of random projections" in help_text
        code = main(["train", "--method", "toy", "--toy-bits", "0", "--data", str(npz_data), "--out",
                     str(tmp_path / "a"), "--no-progress"])  # fmt: skip
        assert code == 2 and "--toy-bits 0" in capsys.readouterr().err
        code = main(["train", "--method", "toy", "--set", "toy.scale=-1", "--data", str(npz_data), "--out",
                     str(tmp_path / "b"), "--no-progress"])  # fmt: skip
        assert code == 2 and "toy.scale=-1" in capsys.readouterr().err
    assert main(["train", "--method", "toy", "--data", str(npz_data), "--no-progress"]) == 2
    assert "unknown method; choose from deepcluster" in capsys.readouterr().err


def test_a_method_name_is_registered_once_and_cannot_hide_a_core_section() -> None:
    with METHODS.registered(Toy), pytest.raises(ValueError, match="registered already"):
        METHODS.register(Toy)

    class Optim(Toy):
        name = "optim"

    with pytest.raises(ValueError, match="core section"):
        METHODS.register(Optim)
    with pytest.raises(ConfigError, match="--method nope"):
        METHODS["nope"]
