"""`deepcluster export`: a tiny real run's network as a state_dict, TorchScript and ONNX file, each computing what
the run's PyTorch network computes, with the preprocessing written down beside it; and the bad inputs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import deepcluster
from deepcluster.api import train
from deepcluster.config import ConfigError, config_from_dict
from deepcluster.data.views import ClusterView
from deepcluster.methods import METHODS, Assignment
from deepcluster.models.loading import load_model
from deepcluster.models.registry import build_backbone
from deepcluster.storage import RunDir, save_checkpoint
from deepcluster.use.export import add_export_parser, export_run, metadata_path, run_export
from synthetic import small_config, write_pattern_npz

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

ONE_EPOCH = {"run": {"epochs": 1}}
V2_SMALL = {"n_sets": 2, "n_small": 2, "hidden": 64, "out_dim": 16}
RUNS: dict[str, dict[str, dict]] = {  # method -> overrides of small_config: one epoch of 3 steps at 16 px
    "deepcluster": ONE_EPOCH,
    "deepcluster-v2": {**ONE_EPOCH, "model": {"arch": "alexnet_small"}, "deepcluster_v2": V2_SMALL},
    "sela": {**ONE_EPOCH, "sela": {"heads": 2, "updates": 1}},
    "deepercluster": {**ONE_EPOCH, "deepercluster": {"super_clusters": 2}},
}


@pytest.fixture(scope="module")
def run_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A finished tiny run of a method (trained once per module, on first use)."""
    data = write_pattern_npz(tmp_path_factory.mktemp("export-data") / "patterns.npz", n=96)
    done: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in done:
            out = tmp_path_factory.mktemp(method) / "run"
            train(small_config(data, out, method=method, **RUNS[method]))
            done[method] = out
        return done[method]

    return get


@pytest.fixture(scope="module")
def run(run_of: Callable[[str], Path]) -> Path:
    return run_of("deepcluster")


def _images(run: Path, n: int = 5) -> torch.Tensor:
    """n cluster-view images of the run's own kind (16 px patterns, normalised as the run normalises)."""
    model = load_model(run)
    pixels = torch.from_numpy(np.load(model.data)["images"][:n]).permute(0, 3, 1, 2).contiguous()
    return ClusterView(model.input_size, model.mean, model.std)(pixels)


def _reference(run: Path, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_model(run).backbone.eval()(images)


# ------------------------------------------------------------------------------------------------ formats
def test_the_state_dict_loads_into_our_builder_and_gives_the_same_embedding(
    run: Path, tmp_path: Path
) -> None:
    out = export_run(run, "state_dict", tmp_path / "model.pt")
    info = json.loads(metadata_path(out).read_text())
    state = torch.load(out, weights_only=True)
    assert any(key.startswith("sobel.") for key in state)  # the fixed Sobel layer travels with the weights
    backbone = build_backbone(info["arch"], sobel=info["sobel"], input_size=info["input_size"])
    backbone.load_state_dict(state)
    images = _images(run)
    with torch.no_grad():
        assert torch.equal(backbone.eval()(images), _reference(run, images))


def test_torchscript_gives_pytorch_s_output(run: Path, tmp_path: Path) -> None:
    out = export_run(run, "torchscript", tmp_path / "model.ts")
    scripted = torch.jit.load(str(out))
    for n in (1, 5):  # another batch size than the trace's
        images = _images(run, n)
        with torch.no_grad():
            got = scripted(images)
        assert got.shape == (n, load_model(run).backbone.feature_dim)
        assert (got - _reference(run, images)).abs().max() <= 1e-5


def test_onnx_under_onnxruntime_matches_pytorch(run: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = export_run(run, "onnx", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for n in (1, 7):  # the batch axis is dynamic
        images = _images(run, n)
        (got,) = session.run(["embedding"], {"images": images.numpy()})
        reference = _reference(run, images).numpy()
        assert got.shape == reference.shape
        assert float(np.abs(got - reference).max()) <= 1e-4
    check = json.loads(metadata_path(out).read_text())["check"]
    assert check["max_abs_difference"]["embedding"] <= 1e-4


def test_the_json_writes_down_how_to_feed_the_network(run: Path, tmp_path: Path) -> None:
    out = export_run(run, "torchscript", tmp_path / "net.ts")
    assert metadata_path(out) == tmp_path / "net.ts.json"
    info = json.loads(metadata_path(out).read_text())
    config = deepcluster.load_config(RunDir(run).config)
    model = load_model(run)
    pre = info["preprocessing"]
    assert (pre["input_size"], pre["resize"]) == (config.data.input_size, config.data.resize) == (16, 16)
    assert pre["color_order"] == "RGB" and pre["range"] == [0.0, 1.0] and pre["scale"] == 1 / 255
    assert pre["mean"] == list(config.data.mean) and pre["std"] == list(config.data.std)
    assert pre["sobel_in_network"] is config.model.sobel is True
    assert (pre["resize_interpolation"], pre["antialias"], pre["crop"]) == ("bilinear", True, "center")
    assert info["arch"] == config.model.arch and info["embedding_dim"] == model.backbone.feature_dim
    assert info["inputs"] == [{"name": "images", "shape": ["batch", 3, 16, 16], "dtype": "float32"}]
    assert info["outputs"] == [
        {"name": "embedding", "shape": ["batch", info["embedding_dim"]], "dtype": "float32"}
    ]
    assert info["format"] == "torchscript" and info["deepcluster_version"] == deepcluster.__version__
    source = info["source"]
    assert source["path"] == str(run.resolve()) and source["method"] == "deepcluster" and source["epoch"] == 1


def test_the_json_s_preprocessing_reproduces_the_cluster_view(run: Path, tmp_path: Path) -> None:
    """Following the written steps by hand (no deepcluster) gives the network's input the run fed it."""
    info = json.loads(metadata_path(export_run(run, "state_dict", tmp_path / "m.pt")).read_text())
    pre = info["preprocessing"]
    pixels = np.load(load_model(run).data)["images"][:4]  # already 16 x 16: resize and crop leave them
    by_hand = (pixels.astype(np.float32) * pre["scale"] - pre["mean"]) / pre["std"]
    view = _images(run, 4).permute(0, 2, 3, 1).numpy()
    assert np.abs(by_hand - view).max() < 1e-6


# ------------------------------------------------------------------------------------------------ heads
def _checkpoint_heads(run: Path, feature_dim: int) -> torch.nn.Module:
    """The run's heads rebuilt here independently of export: the method's build_heads, the checkpoint's weights."""
    checkpoint = RunDir(run).load_checkpoint()
    method = METHODS.build(config_from_dict(checkpoint["config"], METHODS))
    labels = checkpoint["loop"]["labels"]
    heads = method.build_heads(feature_dim, Assignment(labels, checkpoint["n_classes"]), torch.Generator())
    heads.load_state_dict(checkpoint["heads"])
    return heads.eval()


@pytest.mark.parametrize("method", ["deepcluster", "deepcluster-v2", "sela"])
def test_the_head_exports_with_the_checkpoint_s_weights(run_of, method: str, tmp_path: Path) -> None:
    run = run_of(method)
    images = _images(run)
    embedding = _reference(run, images)
    heads = _checkpoint_heads(run, embedding.shape[1])
    with torch.no_grad():
        expected = heads(embedding)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    state = torch.load(export_run(run, "state_dict", tmp_path / "m.pt", with_head=True), weights_only=True)
    assert state["heads"].keys() == heads.state_dict().keys()
    assert all(torch.equal(state["heads"][k], v) for k, v in heads.state_dict().items())
    out = export_run(run, "torchscript", tmp_path / "m.ts", with_head=True)
    with torch.no_grad():
        got = torch.jit.load(str(out))(images)
    assert len(got) == 1 + len(expected) and (got[0] - embedding).abs().max() <= 1e-5
    for have, want in zip(got[1:], expected, strict=True):
        assert have.shape == want.shape and (have - want).abs().max() <= 1e-5
    info = json.loads(metadata_path(out).read_text())
    assert info["head"]["method"] == method and info["head"]["n_classes"] == 8
    assert [o["shape"][1:] for o in info["outputs"][1:]] == [list(w.shape[1:]) for w in expected]
    if method == "deepcluster-v2":
        assert [o["name"] for o in info["outputs"]] == ["embedding", "projection", "scores"]
        assert info["outputs"][2]["shape"] == ["batch", 2, 8]  # n_sets, k


def test_onnx_with_the_v2_head_matches_pytorch(run_of, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    run = run_of("deepcluster-v2")
    out = export_run(run, "onnx", tmp_path / "v2.onnx", with_head=True)
    images = _images(run, 6)
    embedding = _reference(run, images)
    with torch.no_grad():
        z, scores = _checkpoint_heads(run, embedding.shape[1])(embedding)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})
    for have, want in zip(got, (embedding, z, scores), strict=True):
        assert float(np.abs(have - want.numpy()).max()) <= 1e-4


def test_deepercluster_s_head_gives_every_super_class_s_sub_logits(run_of, tmp_path: Path) -> None:
    run = run_of("deepercluster")
    images = _images(run)
    embedding = _reference(run, images)
    heads = _checkpoint_heads(run, embedding.shape[1])
    scripted = torch.jit.load(str(export_run(run, "torchscript", tmp_path / "h.ts", with_head=True)))
    with torch.no_grad():
        _, super_logits, sub_logits = scripted(images)
        for s in range(heads.n_super):  # the training forward with every image's super-class set to s
            want_super, want_sub = heads(embedding, torch.full((len(images),), s))
            assert (super_logits - want_super).abs().max() <= 1e-5
            assert (sub_logits[:, s] - want_sub).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------------ bad inputs
def test_a_missing_run_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"RUN .*nowhere: no such run directory"):
        export_run(tmp_path / "nowhere", "state_dict", tmp_path / "m.pt")


def test_a_run_without_a_checkpoint_is_named(run: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text(RunDir(run).config.read_text())
    with pytest.raises(ConfigError, match=r"RUN .*bare: the run has no checkpoint"):
        export_run(bare, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_an_unknown_format_is_named_with_the_choices(run: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"--format onx: unknown format.*onnx.*state_dict, torchscript, onnx"
    ):
        export_run(run, "onx", tmp_path / "m.onnx")


def test_an_out_in_a_folder_that_cannot_be_written_is_named(run: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"--out .*a-file/m.pt: cannot write in its folder"):
        export_run(run, "state_dict", blocker / "m.pt")
    with pytest.raises(ConfigError, match=r"--out .*: is a folder"):
        export_run(run, "state_dict", tmp_path)


def test_onnx_without_the_packages_says_how_to_install_them(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it fails
    with pytest.raises(ConfigError, match=r"--format onnx needs .*pip install deepcluster\[export\]"):
        export_run(run, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_checkpoint_file_exports_and_one_without_heads_refuses_the_head(run: Path, tmp_path: Path) -> None:
    last = RunDir(run).checkpoint
    state = torch.load(export_run(last, "state_dict", tmp_path / "f.pt", with_head=True), weights_only=True)
    checkpoint = RunDir(run).load_checkpoint()
    assert all(torch.equal(state["heads"][k], v) for k, v in checkpoint["heads"].items())
    source = json.loads(metadata_path(tmp_path / "f.pt").read_text())["source"]
    assert (source["kind"], source["path"], source["method"]) == (
        "checkpoint",
        str(last.resolve()),
        "deepcluster",
    )
    early = tmp_path / "early.pt"
    save_checkpoint(early, {**checkpoint, "heads": None})
    with pytest.raises(ConfigError, match=r"--with-head: .*early.pt has no heads yet"):
        export_run(early, "state_dict", tmp_path / "m.pt", with_head=True)
    state = torch.load(export_run(early, "state_dict", tmp_path / "m.pt"), weights_only=True)  # without: fine
    assert state.keys() == checkpoint["model"].keys()


# ------------------------------------------------------------------------------------------------ CLI
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deepcluster")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_the_command_prints_the_written_paths(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cli" / "model.pt"
    args = _parse(["export", str(run), "--format", "state_dict", "--out", str(out), "--with-head"])
    assert run_export(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and str(metadata_path(out)) in printed
    assert set(torch.load(out, weights_only=True)) == {"backbone", "heads"}


def test_the_command_raises_config_error_for_bad_input(run: Path, tmp_path: Path) -> None:
    args = _parse(["export", str(run), "--format", "tflite", "--out", str(tmp_path / "m")])
    with pytest.raises(ConfigError, match="--format tflite"):
        run_export(args)
