"""Load checkpoints in the layout of the released DeepCluster models into our backbones.

The released ``checkpoint.pth.tar`` files are dicts with ``state_dict``, ``arch`` (``'alexnet'`` or
``'vgg16'``) and maybe ``epoch``. Their keys are those of our AlexNetBN / VGG16BN except that ``features`` was
wrapped in ``nn.DataParallel`` (``features.module.0.weight``), old PyTorch wrote no BatchNorm
``num_batches_tracked`` buffers, and the clustering head is stored as ``top_layer.weight`` / ``top_layer.bias``.
Index layouts agree: the original AlexNet classifier is [Dropout, Linear, ReLU, Dropout, Linear, ReLU] (ours
stops before the last, parameter-free ReLU), VGG's is [Linear, ReLU, Dropout, Linear, ReLU], and the Sobel
layer is ``sobel.0`` (1x1 grayscale conv, weights 1/3) then ``sobel.1`` (3x3 conv, 2 outputs).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepcluster.models.registry import ARCHITECTURES, build_backbone

HEAD_PREFIX = "top_layer."
SOBEL_KEY = "sobel.0.weight"
_DATAPARALLEL = re.compile(r"(^|\.)module\.")
_BN_COUNTER = "num_batches_tracked"


@dataclass
class ImportReport:
    """What loading a foreign state dict into a model matched and what it did not."""

    source: str
    arch: str | None = None
    epoch: int | None = None
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Model keys the checkpoint lacks (left at the model's values)."""
    unexpected: list[str] = field(default_factory=list)
    """Checkpoint keys (after renaming) the model does not have."""
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    """``(key, checkpoint shape, model shape)`` of tensors present in both with different shapes."""
    defaulted: list[str] = field(default_factory=list)
    """BatchNorm ``num_batches_tracked`` buffers absent from old checkpoints (harmless, kept at the default)."""
    renamed: dict[str, str] = field(default_factory=dict)
    """Original key -> our key, for keys that were renamed."""
    head: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Shapes of the ``top_layer.*`` tensors, returned separately and not loaded into the backbone."""

    @property
    def ok(self) -> bool:
        """True when every model tensor was found with the right shape and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def message(self) -> str:
        """A readable multi-line summary naming every key that did not match."""
        meta = ", ".join(
            f"{name} {value!r}"
            for name, value in (("arch", self.arch), ("epoch", self.epoch))
            if value is not None
        )
        lines = [
            f"{self.source}{f' ({meta})' if meta else ''}: loaded {len(self.loaded)} tensors, "
            + ("all model keys matched" if self.ok else "some keys did not match")
        ]
        if self.missing:
            lines.append(f"  missing in the checkpoint ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(
                f"  unexpected in the checkpoint ({len(self.unexpected)}): {', '.join(self.unexpected)}"
            )
        for key, theirs, ours in self.mismatched:
            lines.append(f"  shape mismatch for {key}: checkpoint {list(theirs)} vs model {list(ours)}")
        if self.defaulted:
            lines.append(
                f"  {len(self.defaulted)} BatchNorm num_batches_tracked buffers absent (kept at default)"
            )
        if self.head:
            shapes = ", ".join(f"{key} {list(shape)}" for key, shape in self.head.items())
            lines.append(f"  clustering head (top_layer) returned separately: {shapes}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.message()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form of the report."""
        return {
            "source": self.source,
            "arch": self.arch,
            "epoch": self.epoch,
            "ok": self.ok,
            "loaded": list(self.loaded),
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "mismatched": [
                {"key": key, "checkpoint": list(theirs), "model": list(ours)}
                for key, theirs, ours in self.mismatched
            ],
            "defaulted": list(self.defaulted),
            "renamed": dict(self.renamed),
            "head": {key: list(shape) for key, shape in self.head.items()},
        }


@dataclass
class ImportedCheckpoint:
    """Result of :func:`import_deepcluster_checkpoint`: the loaded backbone, its head tensors and the report."""

    model: nn.Module
    head: dict[str, torch.Tensor]
    """``{"weight": [k, 4096], "bias": [k]}`` from ``top_layer.*``; empty when the checkpoint has none."""
    report: ImportReport


def rename_key(key: str) -> str:
    """Our name of an original key: every ``module.`` segment added by ``nn.DataParallel`` removed."""
    return _DATAPARALLEL.sub(r"\1", key)


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """Split an original state dict into ``(backbone tensors, head tensors, renamed keys)``.

    Backbone keys are renamed with :func:`rename_key`; ``top_layer.*`` tensors go to the head with the prefix
    removed (``weight``, ``bias``). Raises ValueError if two original keys map to the same name.
    """
    backbone: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    renamed: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        new = rename_key(key)
        if new != key:
            renamed[key] = new
        if new.startswith(HEAD_PREFIX):
            head[new[len(HEAD_PREFIX) :]] = value
            continue
        if new in origin:
            raise ValueError(f"checkpoint keys {origin[new]!r} and {key!r} both map to {new!r}")
        origin[new] = key
        backbone[new] = value
    return backbone, head, renamed


def load_converted(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "state_dict",
    strict: bool = False,
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Load an original-layout state dict into ``model``; return ``(head tensors, report)``.

    Every tensor whose (renamed) key and shape match is copied; the rest is listed in the report. With
    ``strict=True`` nothing is loaded and ValueError (carrying the report's message) is raised unless
    :attr:`ImportReport.ok`.
    """
    tensors, head, renamed = convert_state_dict(state_dict)
    own = model.state_dict()
    report = ImportReport(source=source, renamed=renamed, head={k: tuple(v.shape) for k, v in head.items()})
    merged = dict(own)
    for key, value in tensors.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            merged[key] = value
            report.loaded.append(key)
    for key in own:
        if key not in tensors:
            (report.defaulted if key.endswith(_BN_COUNTER) else report.missing).append(key)
    if strict and not report.ok:
        raise ValueError(report.message())
    model.load_state_dict(merged, strict=True)
    return head, report


def read_checkpoint(path: str | Path, trusted: bool = False) -> dict[str, Any]:
    """``torch.load`` a checkpoint on the CPU, with ``weights_only=True`` (no arbitrary code).

    Only when ``trusted=True`` does a file that needs full unpickling get loaded with ``weights_only=False``.
    A bare state dict (tensors only) is returned wrapped as ``{"state_dict": ...}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trusted:
            detail = next((line.strip() for line in str(error).splitlines() if "global" in line.lower()), "")
            raise ValueError(
                f"{path} holds objects torch.load(weights_only=True) refuses{f' ({detail})' if detail else ''}; "
                "pass trusted=True to unpickle it fully, only if you trust its origin"
            ) from error
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    if "state_dict" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {"state_dict": dict(obj)}
        raise ValueError(f"{path} has no 'state_dict' entry; its keys are {sorted(map(str, obj))[:10]}")
    return dict(obj)


def import_deepcluster_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    input_size: int = 224,
    strict: bool = False,
    trusted: bool = False,
) -> ImportedCheckpoint:
    """Load a released-DeepCluster-layout checkpoint into ``model`` (built from the checkpoint if None).

    Without a model, the backbone registered under the checkpoint's ``arch`` is built for ``input_size``, with
    Sobel when the checkpoint has ``sobel.0.weight``. The ``top_layer`` head is not loaded but returned in
    :attr:`ImportedCheckpoint.head`. See :func:`load_converted` for ``strict`` and :func:`read_checkpoint` for
    ``trusted``.
    """
    checkpoint = read_checkpoint(path, trusted=trusted)
    state_dict = checkpoint["state_dict"]
    arch = checkpoint.get("arch")
    epoch = checkpoint.get("epoch")
    if model is None:
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"{path}: checkpoint arch {arch!r} is not one of {sorted(ARCHITECTURES)}; build the model "
                "yourself and pass it as `model`"
            )
        sobel = any(rename_key(key) == SOBEL_KEY for key in state_dict)
        model = build_backbone(arch, sobel=sobel, input_size=input_size)
    head, report = load_converted(model, state_dict, source=str(path), strict=strict)
    report.arch = None if arch is None else str(arch)
    report.epoch = None if epoch is None else int(epoch)
    return ImportedCheckpoint(model=model, head=head, report=report)
