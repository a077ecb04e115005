"""`deepcluster export`: a run's backbone (its Sobel layer included; with `with_head`, its heads rebuilt by the
method's `build_heads`) as our state_dict, TorchScript or ONNX, and beside it OUT.json: how to feed it without
deepcluster. TorchScript and ONNX (under onnxruntime) are checked against PyTorch before they are written."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcluster.config import ConfigError, config_from_dict
from deepcluster.config.flags import add_common_flags
from deepcluster.config.options import closest
from deepcluster.methods import METHODS
from deepcluster.models import ClassifierHead, HierarchicalHead, MultiHead, PrototypeHead
from deepcluster.models.loading import load_model
from deepcluster.storage import (
    RunDir,
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    open_run_or_checkpoint,
)
from deepcluster.use.export_metadata import BATCH, INPUT_NAME, ONNX_OPSET, export_metadata, metadata_path
from deepcluster.use.run import checkpoint_heads

FORMATS = ("state_dict", "torchscript", "onnx")
"""The name of the batch axis (dynamic in the ONNX file)."""
TOLERANCE = MappingProxyType({"torchscript": 1e-5, "onnx": 1e-4})
"""Largest absolute difference to PyTorch's output that a written file may show on the check batch."""
CHECK_BATCH = 3
EXTRA_HINT = "pip install deepcluster[export]"
_CHOICES = ", ".join(FORMATS)


class _AllSubLogits(nn.Module):
    """DeeperCluster's head without targets: super-class logits and every super-class's sub-class logits
    [B, n_super, n_sub] (training reads row i's block super_target[i])."""

    def __init__(self, head: HierarchicalHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head.relu(embedding)
        sub = torch.einsum("bd,snd->bsn", h, self.head.sub_weight) + self.head.sub_bias
        return self.head.super_head(h), sub


class ExportedNetwork(nn.Module):
    """The backbone; with heads, (embedding, *the heads' outputs)."""

    def __init__(self, backbone: nn.Module, heads: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone, self.heads = backbone, heads

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        embedding = self.backbone(images)
        if self.heads is None:
            return embedding
        out = self.heads(embedding)
        return (embedding, *out) if isinstance(out, tuple) else (embedding, out)


def export_run(
    run_dir: str | Path, fmt: str, out: str | Path, with_head: bool = False, trusted: bool = False
) -> Path:
    """Export the network of a run directory (or a checkpoint file) as `fmt` (state_dict, torchscript, onnx)
    to `out`, with OUT.json beside it; returns `out`. ConfigError names the bad option or path."""
    target, out = Path(run_dir), Path(out)
    _check_inputs(target, fmt, out)
    model = load_model(target, trusted=trusted)
    backbone = model.backbone.float().cpu().eval()
    heads, module, head_info = _heads(target, backbone.feature_dim, trusted) if with_head else (None,) * 3
    network = ExportedNetwork(backbone, module).eval()
    names = ["embedding", *(head_info["outputs"] if head_info else [])]
    check: dict[str, Any] | None = None
    with torch.no_grad():
        if fmt == "state_dict":
            _save_state_dict(out, backbone, heads)
        elif fmt == "torchscript":
            check = _save_torchscript(out, network, model.input_size, names)
        else:
            check = _save_onnx(out, network, model.input_size, names)
    info = export_metadata(target, fmt, out, model, network.backbone.feature_dim, names, head_info, check)
    atomic_write_text(metadata_path(out), json.dumps(info, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------------ checks
def _check_inputs(target: Path, fmt: str, out: Path) -> None:
    """ConfigError naming the format, the run or the output that cannot be used, before any work."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: unknown format{closest(fmt, FORMATS)}; choose from {_CHOICES}")
    open_run_or_checkpoint(target, "RUN")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as error:
            raise ConfigError(f"--format onnx needs onnx and onnxruntime ({error}): {EXTRA_HINT}") from None
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; name the file to write, e.g. {out / 'model.onnx'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as error:
        raise ConfigError(f"--out {out}: cannot write in its folder ({error.strerror})") from None


# ------------------------------------------------------------------------------------------------ heads
def _heads(target: Path, feature_dim: int, trusted: bool) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The run's heads with the checkpoint's weights, the module of their outputs after the embedding, and
    what OUT.json says of them."""
    state = RunDir(target).load_checkpoint(trusted) if target.is_dir() else load_checkpoint(target, trusted)
    if not isinstance(state, dict) or not {"config", "heads", "n_classes"} <= state.keys():
        raise ConfigError(f"--with-head: {target} is not a deepcluster training checkpoint (it has no heads)")
    name = str(state["config"].get("method"))
    if state["heads"] is None:
        raise ConfigError(f"--with-head: {target} has no heads yet (saved before the first labels)")
    try:  # as the engine builds them (engine/networks.py), then the checkpoint's weights
        method = METHODS.build(config_from_dict(state["config"], METHODS, origin=str(target)))
        heads = checkpoint_heads(method, feature_dim, state)
    except (ConfigError, RuntimeError) as error:
        raise ConfigError(f"--with-head: cannot rebuild the heads of method {name!r}: {error}") from None
    assert heads is not None
    heads = heads.float().cpu().eval()
    module, outputs, shapes = _head_outputs(heads, name)
    info = {"type": type(heads).__name__, "method": name, "n_classes": int(state["n_classes"])}
    return heads, module, {**info, "outputs": outputs, "shapes": shapes}


def _head_outputs(heads: nn.Module, method: str) -> tuple[nn.Module, list[str], list[list[Any]]]:
    """The module whose outputs follow the embedding, their names and shapes."""
    if isinstance(heads, ClassifierHead):
        return heads, ["logits"], [[BATCH, heads.n_out]]
    if isinstance(heads, MultiHead):
        return heads, ["logits"], [[BATCH, heads.n_heads, heads.n_out]]
    if isinstance(heads, PrototypeHead):
        n_sets, k, dim = heads.prototypes.shape
        return heads, ["projection", "scores"], [[BATCH, dim], [BATCH, n_sets, k]]
    if isinstance(heads, HierarchicalHead):
        shapes = [[BATCH, heads.n_super], [BATCH, heads.n_super, heads.n_sub]]
        return _AllSubLogits(heads), ["super_logits", "sub_logits"], shapes
    kind = type(heads).__name__
    raise ConfigError(f"--with-head: method {method!r} has heads ({kind}) that export does not know")


# ------------------------------------------------------------------------------------------------ formats
def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}


def _save_state_dict(out: Path, backbone: nn.Module, heads: nn.Module | None) -> None:
    """The backbone's state_dict (tensors only); with heads, {"backbone": ..., "heads": ...}."""
    state: dict[str, Any] = _tensors(backbone)
    if heads is not None:
        state = {"backbone": state, "heads": _tensors(heads)}
    atomic_write(out, lambda handle: torch.save(state, handle))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No deprecation notices of torch.jit and the legacy ONNX exporter, nor the tracer's of the shape check."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        yield


def _check_batch(input_size: int) -> torch.Tensor:
    return torch.randn(CHECK_BATCH, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))


def _as_list(outputs: Any) -> list[Any]:
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def _compare(fmt: str, network: nn.Module, x: torch.Tensor, got: Any, names: list[str]) -> dict[str, Any]:
    """The largest absolute difference to PyTorch per output (inf: another shape); ConfigError past the
    format's tolerance, before anything is written."""
    differences = {}
    for name, want, have in zip(names, _as_list(network(x)), _as_list(got), strict=True):
        have = torch.as_tensor(np.asarray(have)).float()
        same = have.shape == want.shape
        differences[name] = float((have - want.float()).abs().max()) if same else float("inf")
    if not max(differences.values()) <= TOLERANCE[fmt]:
        raise ConfigError(f"--format {fmt}: the file would differ from PyTorch by {differences} (too much)")
    return {"batch": CHECK_BATCH, "tolerance": TOLERANCE[fmt], "max_abs_difference": differences}


def _save_torchscript(out: Path, network: nn.Module, input_size: int, names: list[str]) -> dict[str, Any]:
    """Traced on 2 images, checked (saved and loaded back) on `CHECK_BATCH` others."""
    x, buffer = _check_batch(input_size), io.BytesIO()
    with _quiet():
        torch.jit.save(torch.jit.trace(network, x[:2]), buffer)
        buffer.seek(0)
        check = _compare("torchscript", network, x, torch.jit.load(buffer, map_location="cpu")(x), names)
    atomic_write(out, lambda handle: handle.write(buffer.getvalue()))
    return check


def _save_onnx(out: Path, network: nn.Module, input_size: int, names: list[str]) -> dict[str, Any]:
    import onnx
    import onnxruntime

    x, buffer = _check_batch(input_size), io.BytesIO()
    axes = {name: {0: BATCH} for name in [INPUT_NAME, *names]}
    with _quiet():
        torch.onnx.export(
            network,
            (x[:2],),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
        )
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    check = _compare("onnx", network, x, session.run(names, {INPUT_NAME: x.numpy()}), names)
    check["runtime"] = f"onnxruntime {onnxruntime.__version__}"
    atomic_write(out, lambda handle: handle.write(data))
    return check


# ------------------------------------------------------------------------------------------------ OUT.json
# ------------------------------------------------------------------------------------------------ CLI
def add_export_parser(commands: argparse._SubParsersAction) -> None:
    """`deepcluster export RUN --format F --out FILE [--with-head] [--trust-checkpoint]`."""
    p = commands.add_parser(
        "export",
        help="a run's network as a state_dict, TorchScript or ONNX file, with its preprocessing in FILE.json",
        description="Export the backbone of a run directory or checkpoint file (with its Sobel layer, and with "
        "--with-head its heads); FILE.json beside it says how to feed it. ONNX needs " + EXTRA_HINT + ".",
    )
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--format", required=True, metavar="{" + ",".join(FORMATS) + "}", help="file format")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (FILE.json beside it)")
    p.add_argument("--with-head", action="store_true", help="also the heads (outputs after the embedding)")
    add_common_flags(p, trust=True)


def run_export(args: argparse.Namespace) -> int:
    """Run `deepcluster export`: print the written paths."""
    out = export_run(args.run, args.format, args.out, with_head=args.with_head, trusted=args.trust_checkpoint)
    print(f"exported: {out}")
    print(f"preprocessing: {metadata_path(out)}")
    return 0
