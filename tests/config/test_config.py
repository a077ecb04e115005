import argparse
import dataclasses

import pytest
import yaml

from deepcluster import load_config, preset_config
from deepcluster.cli import build_parser, build_train_config
from deepcluster.config import ConfigError, TrainConfig, apply_overrides, dump_config
from deepcluster.config.options import declared_kind
from deepcluster.evaluate.options import EvalConfig


def _train_args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_yaml_round_trip_reproduces_every_setting(tmp_path):
    config = apply_overrides(
        preset_config("default"), {"optim": {"lr": 0.1}, "augment": {"crop_scale": [0.3, 0.9]}}
    )
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    again = load_config(path)
    assert again == config
    assert again.augment.crop_scale == (0.3, 0.9)


def test_paper_preset_is_the_paper_setting():
    paper = preset_config("paper")
    assert paper.preset == "paper"
    assert paper.optim.lr == 0.05 and paper.optim.momentum == 0.9 and paper.optim.weight_decay == 1e-5
    assert paper.optim.schedule == "constant" and paper.optim.batch_size == 256
    assert paper.augment.color_jitter == 0.0 and paper.augment.crop_scale == (0.08, 1.0)
    assert paper.cluster.pca_dim == 256 and paper.cluster.kmeans_iters == 20 and paper.cluster.k == 10000
    assert paper.model.sobel


@pytest.mark.parametrize(
    "section, option, value, fragment",
    [
        ("optim", "batch_size", 0, "--batch-size"),
        ("cluster", "k", 1, "--k"),
        ("run", "epochs", 0, "--epochs"),
        ("optim", "lr", -1.0, "--lr"),
        ("optim", "schedule", "linear-ish", "optim.schedule"),
        ("run", "precision", "fp8", "--precision"),
        ("run", "device", "tpu", "--device"),
        ("augment", "crop_scale", (0.5, 0.2), "augment.crop_scale"),
        ("data", "input_size", 0, "--input-size"),
        ("data", "memory_limit_gb", 0, "data.memory_limit_gb"),
        ("cluster", "kmeans_backend", "cuda", "cluster.kmeans_backend"),
    ],
)
def test_each_bad_option_is_named(section, option, value, fragment):
    config = TrainConfig()
    setattr(getattr(config, section), option, value)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        config.validate()


def test_unknown_options_in_yaml_are_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"optim": {"learning_rate": 0.1}}))
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(path)
    path.write_text(yaml.safe_dump({"optimiser": {"lr": 0.1}}))
    with pytest.raises(ConfigError, match="optimiser"):
        load_config(path)


def test_unknown_preset_and_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="--preset"):
        preset_config("fastest")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_command_line_overrides_config_file_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cluster": {"k": 30}, "optim": {"lr": 0.2, "batch_size": 32}}))
    args = _train_args(
        "--config",
        str(path),
        "--k",
        "40",
        "--set",
        "optim.schedule=cosine",
        "--set",
        "augment.crop_scale=[0.5, 1.0]",
        "--no-sobel",
    )
    config = build_train_config(args)
    assert config.cluster.k == 40
    assert config.optim.lr == 0.2 and config.optim.batch_size == 32
    assert config.optim.schedule == "cosine"
    assert config.augment.crop_scale == (0.5, 1.0)
    assert config.model.sobel is False


def test_bad_set_syntax_is_explained():
    with pytest.raises(ConfigError, match="SECTION.OPTION=VALUE"):
        build_train_config(_train_args("--set", "lr=0.1"))


@pytest.mark.parametrize(
    "annotation, kind",
    [
        ("int", ("int", False)),
        ("float | None", ("float", True)),
        ("None | str", ("str", True)),
        ("tuple[float, float]", ("tuple[float, float]", False)),
        ("tuple[int, ...]", ("tuple[int, ...]", False)),
        ("int | str", ("", False)),
        (int, ("int", False)),
    ],
)
def test_declared_kind_reads_an_annotation(annotation, kind):
    assert declared_kind(annotation) == kind


def test_declared_kind_reads_a_field_and_gives_each_flag_its_type():
    fields = {item.name: item for item in dataclasses.fields(EvalConfig)}
    assert declared_kind(fields["input_size"]) == ("int", True)
    assert declared_kind(fields["baseline"]) == ("bool", False)
    args = build_parser().parse_args(["evaluate", "RUN", "--input-size", "32", "--knn-k", "5", "7"])
    assert args.evaluate__input_size == 32 and args.evaluate__knn_ks == [5, 7]
    assert _train_args("--lr", "0.5", "--k", "12").optim__lr == 0.5


def test_every_command_declares_the_shared_flags_once_with_one_help():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps: dict[str, set[str]] = {}
    for name, parser in commands.choices.items():
        flags = {flag: action.help for action in parser._actions for flag in action.option_strings}
        assert "-q" in flags and "--quiet" in flags, name
        for flag in ("--quiet", "--trust-checkpoint", "--no-progress"):
            if flag in flags and not (name == "train" and flag == "--no-progress"):  # train's: run.progress
                helps.setdefault(flag, set()).add(flags[flag])
    assert {flag: len(texts) for flag, texts in helps.items()} == {
        "--quiet": 1,
        "--trust-checkpoint": 1,
        "--no-progress": 1,
    }
