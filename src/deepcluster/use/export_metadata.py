"""OUT.json beside an exported network (`deepcluster export`): its inputs and outputs, the preprocessing that
feeds it without deepcluster, and where it came from."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import torch

from deepcluster.config import read_yaml
from deepcluster.models.loading import LoadedModel
from deepcluster.storage import RunDir, read_header

INPUT_NAME = "images"
BATCH = "batch"
"""The name of the batch axis in the exported files' shapes."""
ONNX_OPSET = 17


def metadata_path(out: str | Path) -> Path:
    """Where the preprocessing of the exported file `out` is written: OUT.json."""
    return Path(out).with_name(Path(out).name + ".json")


def _version() -> str:
    """The installed package's version (`deepcluster.__version__` sits on the floor above)."""
    try:
        return importlib.metadata.version("deepcluster")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _source(target: Path, model: LoadedModel, method: str | None) -> dict[str, Any]:
    """The run (or checkpoint file), its method and where the run stood when the checkpoint was saved."""
    run, checkpoint = (RunDir(target) if target.is_dir() else None), target
    if run is not None:
        checkpoint = run.checkpoint if run.checkpoint.is_file() else run.previous_checkpoint
        method = method or read_yaml(run.config).get("method")
    header = read_header(checkpoint) or {}
    where = {"path": str(target.resolve()), "kind": "run" if run else "checkpoint", "method": method}
    steps = {key: header.get(key) for key in ("epoch", "step", "global_step")}
    return {**where, "checkpoint": str(checkpoint.resolve()), **steps, "data": model.data}


def _preprocessing(model: LoadedModel) -> dict[str, Any]:
    """What the cluster view does (data/decode.py, then data/views.py `ClusterView`), in that order."""
    size, resize = model.input_size, model.resize
    return {
        "steps": [
            "load the image as RGB (grayscale repeated to 3 channels, transparency composited on white)",
            f"resize the shorter side to {resize} px (bilinear, antialiased)",
            f"centre crop {size} x {size} (offsets round((side - {size}) / 2))",
            "uint8 to float32, divide by 255 (range [0, 1])",
            "per channel: subtract mean, divide by std",
            f"stack as NCHW float32 [batch, 3, {size}, {size}]",
        ],
        "color_order": "RGB",
        "layout": "NCHW",
        "dtype": "float32",
        "resize": resize,
        "resize_interpolation": "bilinear",
        "antialias": True,
        "crop": "center",
        "input_size": size,
        "scale": 1 / 255,
        "range": [0.0, 1.0],
        "mean": list(model.mean),
        "std": list(model.std),
        "sobel_in_network": bool(model.sobel),  # when True the network filters the normalised RGB itself
    }


def export_metadata(
    target: Path,
    fmt: str,
    out: Path,
    model: LoadedModel,
    feature_dim: int,
    names: list[str],
    head: dict[str, Any] | None,
    check: dict[str, Any] | None,
) -> dict[str, Any]:
    size, dim = model.input_size, int(feature_dim)
    shapes = [[BATCH, dim], *(head["shapes"] if head else [])]
    info: dict[str, Any] = {
        "format": fmt,
        "file": out.name,
        "deepcluster_version": _version(),
        "torch_version": torch.__version__,
        "arch": model.arch,
        "embedding_dim": dim,
        "sobel": bool(model.sobel),
        "input_size": size,
        "inputs": [{"name": INPUT_NAME, "shape": [BATCH, 3, size, size], "dtype": "float32"}],
        "outputs": [{"name": n, "shape": s, "dtype": "float32"} for n, s in zip(names, shapes, strict=True)],
        "preprocessing": _preprocessing(model),
        "source": _source(target, model, head and head["method"]),
        "head": head,
    }
    if fmt == "state_dict":
        layout = "backbone state_dict" if head is None else "{backbone: state_dict, heads: state_dict}"
        build = f"build_backbone({model.arch!r}, sobel={bool(model.sobel)}, input_size={size})"
        info["state_dict"] = {"layout": layout, "load": "torch.load(FILE, weights_only=True)", "into": build}
    if fmt == "onnx":
        info["onnx"] = {"opset": ONNX_OPSET, "batch_axis": 0, "exporter": "torch.onnx, dynamo=False"}
    return {**info, "check": check} if check is not None else info
