"""The trained network of a run directory or a checkpoint file (ours or the released DeepCluster layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deepcluster.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError, default_resize, load_config
from deepcluster.models.backbone import Backbone
from deepcluster.models.checkpoint_import import import_deepcluster_checkpoint
from deepcluster.models.registry import build_backbone
from deepcluster.storage import load_checkpoint, open_run_or_checkpoint


@dataclass
class LoadedModel:
    """A backbone to evaluate and what is known of where it came from."""

    backbone: Backbone
    arch: str
    sobel: bool
    input_size: int
    resize: int
    run_dir: Path | None
    data: str | None
    split: str | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    report: str | None = None


def load_model(target: str | Path, input_size: int | None = None, trusted: bool = False) -> LoadedModel:
    """Build and load the network of a run directory or a checkpoint file. Checkpoints are read without running
    code; `trusted` (--trust-checkpoint) also loads files that need a full unpickle (older formats)."""
    path = Path(target)
    run = open_run_or_checkpoint(path)
    if run is not None:
        config = load_config(run.config)  # the data and model sections; methods' are not needed
        size = int(config.data.input_size or 224)
        backbone = build_backbone(str(config.model.arch), sobel=config.model.sobel, input_size=size)
        backbone.load_state_dict(run.load_checkpoint(trusted)["model"])
        resize = int(config.data.resize or size)
        return LoadedModel(
            backbone,
            str(config.model.arch),
            config.model.sobel,
            size,
            resize,
            path,
            config.data.data,
            config.data.split,
            config.data.mean,
            config.data.std,
        )
    checkpoint = load_checkpoint(
        path, trusted
    )  # ours (any format) or another torch file; no code unless trusted
    if isinstance(checkpoint, dict) and "model" in checkpoint and "config" in checkpoint:  # one of ours
        settings = checkpoint["config"]
        size = int(input_size or settings["data"]["input_size"])
        arch, sobel = str(settings["model"]["arch"]), bool(settings["model"]["sobel"])
        backbone = build_backbone(arch, sobel=sobel, input_size=size)
        backbone.load_state_dict(checkpoint["model"])
        resize = int(settings["data"].get("resize") or size)
        mean, std = tuple(settings["data"]["mean"]), tuple(settings["data"]["std"])
        return LoadedModel(
            backbone, arch, sobel, size, resize, None, settings["data"]["data"], None, mean, std
        )
    size = int(input_size or 224)
    try:  # ours of an older format, or the released DeepCluster layout
        imported = import_deepcluster_checkpoint(path, input_size=size, trusted=trusted)
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    backbone = imported.model
    resize = default_resize(size)
    return LoadedModel(
        backbone,
        backbone.arch,
        backbone.sobel is not None,
        size,
        resize,
        None,
        None,
        None,
        report=imported.report.message(),
    )
