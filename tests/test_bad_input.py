"""Issue 16: every bad input gets one clear line (exit 2) naming the option, the value and the fix, before any
network work; settings that are upper bounds (pca_dim, the batch) are fitted to small data with a warning."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

from deepcluster.cli import build_parser, build_train_config, main
from deepcluster.config import CORE_SECTIONS, ConfigError, apply_overrides, load_config
from deepcluster.engine.loop import Trainer
from deepcluster.engine.setup import fit_data_size, refuse_before_data
from deepcluster.methods import METHODS
from synthetic import forward_calls, noise_image, small_config, write_pattern_npz

MISSING_DATA = "/nonexistent/folder"
"""A --data that fails at once: a value that slipped through the checks would end the run there, named wrongly."""

WRONG = {  # values of the wrong type for each declared type, as --set reads them (YAML)
    "int": ["abc", "1.5", "[1]", "true", "{a: 1}"],
    "float": ["abc", "[1]", "true", ".inf"],
    "str": ["[1]", "{a: 1}", "5", "true"],
    "bool": ["abc", "5", "[true]", "null"],
    "tuple": ["0.5", "[a, b, c]", "[1]", "[true, 1, 1]", "null"],
}


def _kind(annotation: str) -> tuple[str, bool]:
    parts = [part.strip() for part in str(annotation).split("|")]
    base = "tuple" if parts[0].startswith("tuple") else parts[0]
    return base, "None" in parts


def _every_option() -> list[tuple[str, str, str]]:
    """(section, option, declared type) of every option of the core sections and every registered method's."""
    found = []
    for section, kind in {**CORE_SECTIONS, **METHODS.sections}.items():
        for item in dataclasses.fields(kind):
            found.append((section, item.name, str(item.type)))
    return found


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("data") / "patterns.npz")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_every_option_of_every_section_refuses_a_wrong_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = _every_option()
    assert {"data", "cluster", "run", "deepercluster", "sela", "deepcluster_v2", "sela_v2", "transfer"} <= {
        section for section, _, _ in options
    }
    slipped = []
    for section, name, annotation in options:
        kind, optional = _kind(annotation)
        values = [v for v in WRONG[kind] if not (optional and v == "null")]
        if not optional and kind in ("int", "float", "str"):
            values.append("null")
        for value in values:
            argv = ["train", "--set", f"{section}.{name}={value}", "-q"]
            argv += [] if (section, name) == ("run", "out") else ["--out", str(tmp_path / "run")]
            argv += [] if (section, name) == ("data", "data") else ["--data", MISSING_DATA]
            code, err = _run(argv, capsys)
            one_line = len(err.splitlines()) == 1 and err.startswith("deepcluster: error: ")
            if code != 2 or not one_line or f"{section}.{name}" not in err:
                slipped.append(f"{section}.{name}={value}: exit {code}, {err!r}")
    assert not slipped, "\n".join(slipped)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--k", "abc"], "argument --k: invalid int value: 'abc'"),
        (["--k", "2.5"], "argument --k: invalid int value: '2.5'"),
        (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
        (["--epochs", ""], "argument --epochs: invalid int value"),
    ],
)
def test_flags_of_the_wrong_type_exit_2(argv, fragment, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["train", *argv])
    assert stop.value.code == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--lr", "nan"], "--lr nan: must be a finite number (optim.lr)"),
        (["--seed", "-1"], "--seed -1: must be a whole number from 0 to 2**63 - 1 (run.seed)"),
        (["--arch", "resnet19"], "--arch resnet19: unknown architecture (did you mean resnet18?)"),
        (["--method", "deepclustr"], "--method deepclustr: unknown method (did you mean deepcluster?)"),
        (["--set", "run.knn_monitor=1"], "run.knn_monitor=1: must be 0 (off) or a whole number >= 2"),
        (["--set", "cluster.pca_sample=1"], "cluster.pca_sample=1: must be a whole number >= 2"),
        (["--set", "data.decode_threads=0"], "data.decode_threads=0: must be a whole number >= 1"),
        (["--set", "optim.batchsize=8"], "unknown option optim.batchsize (did you mean batch_size?)"),
        (["--set", "optim.k=8"], "unknown option optim.k (it is an option of cluster: cluster.k)"),
        (["--set", "optimm.lr=1"], "unknown section 'optimm' (did you mean optim?)"),
        (["--set", "optim=1"], "--set optim=1: expected SECTION.OPTION=VALUE"),
        (["--set", "optim.lr=[0.1"], "--set optim.lr=[0.1: '[0.1' is not a YAML value"),
    ],
)
def test_bad_values_are_one_line_naming_the_option(
    argv, fragment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(["train", "--data", MISSING_DATA, "--out", str(tmp_path / "r"), *argv], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and fragment in err, err


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("- optim\n- cluster\n", "expected a mapping of sections at the top level"),
        ("optim: {lr: 0.1\n", "not valid YAML"),
        ("optim: 0.1\n", "section 'optim' must be a mapping of options"),
        ("optim: {learning_rat: 0.1}\n", "unknown option optim.learning_rat"),
        ("method: [deepcluster]\n", "must be a method's name"),
        ("preset: [paper]\n", "unknown preset"),
        ("cluster: {k: ten}\n", "--k ten: must be a whole number >= 2 (cluster.k)"),
        ("augment: {crop_scale: 0.5}\n", "augment.crop_scale=0.5: must be a list of 2 numbers"),
        ("sela: {heads: 2.5}\n", "sela.heads=2.5: must be a whole number >= 1"),
    ],
)
def test_bad_yaml_files_are_one_line(
    text, fragment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    code, err = _run(["train", "--config", str(path), "--data", MISSING_DATA, "-q"], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and fragment in err, err


def test_a_binary_or_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "weights.pt"
    binary.write_bytes(bytes(range(256)))
    code, err = _run(["train", "--config", str(binary)], capsys)
    assert code == 2 and f"--config {binary}: cannot be read as text" in err
    code, err = _run(["train", "--config", str(tmp_path)], capsys)
    assert code == 2 and "is a folder, not a file" in err


def test_numbers_yaml_reads_as_text_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"optim": {"weight_decay": "1e-6"}}))
    args = build_parser().parse_args(["train", "--config", str(path), "--set", "optim.lr=1e-3"])
    config = build_train_config(args)
    assert config.optim.lr == 0.001 and config.optim.weight_decay == 1e-6
    config.validate()


# ------------------------------------------------------------------------------------------------ the data's size
def _folder(root: Path, good: int, bad: int) -> Path:
    """`good` tiny noise images and `bad` corrupt files in one folder."""
    root.mkdir()
    for i in range(good):
        noise_image(16, 16, seed=i).save(root / f"img{i:03d}.png")
    for i in range(bad):
        (root / f"broken{i:02d}.jpg").write_bytes(b"not an image" * (i + 1))
    return root


SMALL = ["--epochs", "1", "--batch-size", "32", "--no-progress", "--set", "run.report=false", "--seed", "1"]


def test_213_readable_images_train_with_pca_dim_lowered_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data, out = _folder(tmp_path / "images", good=213, bad=3), tmp_path / "run"
    argv = ["train", "--method", "deepcluster", "--data", str(data), "--out", str(out), "--k", "8", *SMALL]
    with caplog.at_level(logging.WARNING, logger="deepcluster"):
        code, err = _run(argv, capsys)
    assert code == 0, err
    lowered = [r.getMessage() for r in caplog.records if "cluster.pca_dim" in r.getMessage()]
    assert len(lowered) == 1, lowered
    assert "cluster.pca_dim=256" in lowered[0] and "using cluster.pca_dim=212" in lowered[0]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["cluster"]["pca_dim"] == 212 and saved["optim"]["batch_size"] == 32
    assert (out / "labels.csv").is_file()


def test_k_above_the_readable_images_stops_before_any_feature_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = _folder(tmp_path / "images", good=30, bad=10), tmp_path / "run"
    argv = ["train", "--method", "deepcluster", "--data", str(data), "--out", str(out), "--k", "35", *SMALL]
    with forward_calls() as calls:
        code, err = _run(argv, capsys)
    assert code == 2
    assert err.splitlines() == [
        "deepcluster: error: --k 35 is larger than the number of images (30); use --k 30 or less"
    ]
    assert not (out / "labels").exists() and not (out / "checkpoints" / "last.pt").exists()
    assert not (out / "features.npy").exists() and not (out / "metrics.jsonl").exists()
    assert calls == []  # not one forward pass of any network module


def test_k_above_the_source_is_refused_before_decoding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = _folder(tmp_path / "images", good=12, bad=2), tmp_path / "run"
    code, err = _run(["train", "--data", str(data), "--out", str(out), "--k", "20", *SMALL], capsys)
    assert (
        code == 2 and "--k 20 is larger than the number of images (14)" in err
    )  # the files, not yet decoded
    assert not (out / "skipped.txt").exists() and not (out / "labels").exists()


def test_an_input_size_the_arch_cannot_take_names_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = _folder(tmp_path / "images", good=12, bad=0), tmp_path / "run"
    argv = ["train", "--method", "deepcluster", "--data", str(data), "--out", str(out), "--input-size", "8"]
    code, err = _run([*argv, "--k", "4", *SMALL], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "--arch alexnet_small at --input-size 8: input_size=8 is too small for arch 'alexnet_small'" in err
    assert not (out / "labels").exists()


def _fitted(method: str, n_images: int, feature_dim: int | None, **sections: dict):
    config = METHODS.complete(small_config("unused", Path("unused"), method=method, **sections))
    return fit_data_size(config, METHODS[method], n_images, feature_dim)


def test_pca_dim_fits_the_rows_it_is_trained_on_and_the_features(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deepcluster"):
        assert _fitted("deepcluster", 213, 4096, cluster={"pca_dim": 256}).cluster.pca_dim == 212
        sampled = {"pca_dim": 256, "pca_sample": 50}
        assert _fitted("deepercluster", 213, 4096, cluster=sampled).cluster.pca_dim == 49
        assert _fitted("deepcluster", 5000, 96, cluster={"pca_dim": 256}).cluster.pca_dim == 96
        assert len(caplog.records) == 3
        caplog.clear()
        assert _fitted("deepcluster", 213, None, cluster={"pca_dim": 256}).cluster.pca_dim == 256
        assert _fitted("deepcluster", 213, 4096, cluster={"pca_dim": 0}).cluster.pca_dim == 0
        assert _fitted("sela", 213, 4096, cluster={"pca_dim": 256}).cluster.pca_dim == 256
        assert not caplog.records


def test_the_method_runs_with_the_fitted_settings(npz_data: Path, tmp_path: Path) -> None:
    config = small_config(npz_data, tmp_path / "run", cluster={"pca_dim": 256}, optim={"epoch_size": 32})
    trainer = Trainer(apply_overrides(config, {"run": {"epochs": 1}}))
    trainer.fit()
    rows, dim = len(trainer.data.indices), trainer.backbone.feature_dim
    assert (
        trainer.method.config is trainer.config and trainer.config.cluster.pca_dim == min(rows - 1, dim) < 256
    )
    assert (
        load_config(tmp_path / "run" / "config.yaml", METHODS).cluster.pca_dim
        == trainer.config.cluster.pca_dim
    )


def test_the_batch_is_at_most_an_epoch(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deepcluster"):
        assert _fitted("sela", 30, 256, optim={"batch_size": 128}).optim.batch_size == 30
        assert _fitted("sela", 300, 256, optim={"batch_size": 128, "epoch_size": 64}).optim.batch_size == 64
        assert _fitted("sela", 300, 256, optim={"batch_size": 128}).optim.batch_size == 128
    assert [r.getMessage() for r in caplog.records] == [
        "optim.batch_size=128 is larger than the 30 images an epoch draws; using optim.batch_size=30",
        "optim.batch_size=128 is larger than the 64 images an epoch draws; using optim.batch_size=64",
    ]


@pytest.mark.parametrize(
    "method, sections, fragment",
    [
        (
            "deepcluster",
            {"cluster": {"k": 8, "kmeans_sample": 5}},
            "cluster.kmeans_sample=5 is smaller than --k 8",
        ),
        (
            "deepercluster",
            {"cluster": {"k": 40, "kmeans_sample": 8}, "deepercluster": {"super_clusters": 4}},
            "cluster.kmeans_sample=8 is smaller than the 10 clusters of one k-means fit",
        ),
        ("deepcluster-v2", {"cluster": {"k": 200}}, "--k 200 is larger than the number of images (100)"),
        ("sela", {"cluster": {"k": 101}}, "--k 101 is larger than the number of images (100)"),
        (
            "sela-v2",
            {"optim": {"batch_size": 1}, "sela_v2": {"n_large": 1, "n_small": 1}},
            "--batch-size 1: the batch norm of sela_v2's projection head needs at least 2 crops",
        ),
    ],
)
def test_impossible_settings_are_refused_before_decoding(method, sections, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        _fitted(method, 100, None, **sections)


def test_a_sample_no_smaller_than_one_fit_is_fine() -> None:
    sections = {"cluster": {"k": 40, "kmeans_sample": 10}, "deepercluster": {"super_clusters": 4}}
    assert _fitted("deepercluster", 100, 4096, **sections).cluster.kmeans_sample == 10


def test_processes_need_images_and_a_batch_they_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="3 images cannot be shared by 4 processes"):
        _fitted("sela", 3, None, cluster={"k": 2})
    with pytest.raises(ConfigError, match="--epoch-size 2: an epoch needs at least one image per process"):
        _fitted("sela", 100, None, optim={"epoch_size": 2})
    assert _fitted("sela", 30, 256, optim={"batch_size": 128}).optim.batch_size == 28
    config = apply_overrides(
        small_config("unused", Path("unused"), method="sela"), {"optim": {"batch_size": 30}}
    )
    with pytest.raises(
        ConfigError, match=r"--batch-size 30 \(the total over all processes\) is not a multiple"
    ):
        refuse_before_data(METHODS.complete(config), METHODS["sela"], 100)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["evaluate", "RUN", "--probe-epochs", "-1"], "--probe-epochs -1: must be a whole number >= 0"),
        (["evaluate", "RUN", "--knn-k", "5", "0"], "--knn-k [5, 0]: every k must be a whole number >= 1"),
        (["report", "RUN", "--clusters", "0"], "--clusters 0: must be a whole number >= 1"),
        (["report", "RUN", "--per-cluster", "0"], "--per-cluster 0: must be a whole number >= 1"),
        (["report", "RUN", "--channels", "-2"], "--channels -2: must be a whole number >= 1"),
        (["report", "RUN", "--tap", "conv5:a"], "--tap conv5:a: expected LAYER or LAYER:C,C,..."),
    ],
)
def test_evaluate_and_report_flags_are_checked_as_declared(
    argv, fragment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The declared checks of `evaluate.options.EvalConfig` and `report.options.ReportOptions` refuse a bad
    flag before the run is opened (RUN does not exist)."""
    code, err = _run([str(tmp_path / "run") if a == "RUN" else a for a in argv], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and fragment in err, err
