"""Typed run configuration: dataclasses validated once at start-up, YAML in and out, named presets.

Every setting of a run lives here. `TrainConfig.to_dict()` is what a run writes to `config.yaml`; loading that file
back with `load_config` and training again reproduces the run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

SMALL_INPUT_LIMIT = 96
"""Inputs of at most this many pixels are "small images": their own size, small-input models, SeLa's lambda 10."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """An invalid setting: the message names the option and how to fix it."""


@dataclass
class DataConfig:
    """Where the images come from and how they are shown to the network."""

    data: str | None = None
    """Folder, `.npz`, file list, or a torchvision data set name; None: the embedded CIFAR-10 test split."""
    data_root: str | None = None
    """Root folder for torchvision data sets."""
    split: str | None = None
    """Split of an archive or torchvision data set (default: its training split)."""
    download: bool = False
    """Allow torchvision to download a named data set."""
    input_size: int | None = None
    """Side of the square the network sees; None: the images' own size up to 96 px, else 224."""
    resize: int | None = None
    """Side images are resized to (shorter side) and centre-cropped to once, at decoding; None: from input_size."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    decode_threads: int | None = None
    """Threads decoding images; None: all cores."""
    memory_limit_gb: float = 16.0
    """Largest decoded-image cache (uint8) and extracted-values array (float32) kept in RAM; a larger one is a
    memory-mapped file in cache_dir."""
    cache_dir: str | None = None
    """Folder of the memory-mapped cache; None: the run directory (the file is removed when the run ends)."""


@dataclass
class AugmentConfig:
    """The train view: random resized crop, flip and optional colour changes, applied to whole batches."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    color_jitter: float = 0.4
    """Strength of brightness/contrast/saturation jitter (0: off)."""
    grayscale_prob: float = 0.0


@dataclass
class ModelConfig:
    """The backbone."""

    arch: str | None = None
    """alexnet, alexnet_small, vgg16, vgg16_small, resnet18, resnet50; None: AlexNet sized for the input."""
    sobel: bool = True


@dataclass
class ClusterConfig:
    """How features become pseudo-labels."""

    k: int = 100
    pca_dim: int = 256
    pca_sample: int | None = None
    """Train the PCA on this many images (None: all of them)."""
    kmeans_iters: int = 20
    kmeans_sample: int | None = None
    """Train k-means on this many points drawn at random, then assign every point in batches (None: train on
    all of them). Bounds k-means' time and memory on large collections."""
    kmeans_backend: str = "auto"
    """faiss (CPU), torch (on the run's device) or auto: torch on a CUDA run, faiss otherwise."""
    recluster_every: int | None = None
    """Epochs between two clusterings; None: the method's own (DeepCluster 1, DeeperCluster 3, as the papers)."""
    distributed_kmeans: bool = False
    """Under torchrun: cluster with a k-means that all-reduces sums and counts over the processes' shards of the
    features (DeepCluster), instead of gathering every feature on the first process for faiss."""


@dataclass
class SelaConfig:
    """SeLa (Asano et al., 2020): labels from optimal transport with equal-size clusters, several heads."""

    heads: int = 10
    """Classification heads, each Linear(features, k) with its own labels; the loss is their mean."""
    lam: float | None = None
    """Sharpness lambda of P^lambda; None: 25, or 10 for inputs of at most 96 px (the paper's small-image value)."""
    updates: int | None = None
    """Label updates over the run (after the random start; the last one at the very end); None: 2 per epoch."""
    spacing: str = "quadratic"
    """quadratic (dense early, as in the paper) or linear spacing of the updates."""
    tolerance: float = 0.1
    """Stop Sinkhorn when the column scaling changes by less than this (sum of |old/new - 1|)."""
    check_every: int = 10
    """Iterations between two convergence checks."""
    max_iters: int = 1000
    chunk_mb: float = 64.0
    """Rows of P are processed in float64 chunks of about this size; bounds Sinkhorn's working memory."""
    view: str = "cluster"
    """Which view P is computed on: cluster (centre crop) or train (the augmented crops)."""


@dataclass
class DeeperClusterConfig:
    """DeeperCluster (Caron et al., 2019): (rotation, cluster) targets, clustered hierarchically."""

    super_clusters: int = 4
    """m: k-means first splits the data into m super-clusters, then each into k / m sub-clusters (1: flat)."""
    rotations: bool = True
    """Show each image rotated by 0, 90, 180 or 270 degrees and predict the rotation with the cluster; the
    super-classes are the (super-cluster, rotation) pairs, 4m of them. False: DeepCluster with hierarchical
    k-means."""


@dataclass
class TransferConfig:
    """Label transfer: train any architecture on the labels a run wrote."""

    labels: str | None = None
    """A run's labels.csv (every `cluster*` column is one head's labels)."""


@dataclass
class OptimConfig:
    """SGD for the body and for each epoch's fresh top layer."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-5
    head_lr: float | None = None
    """Learning rate of the top layer; None: same as lr."""
    batch_size: int = 128
    epoch_size: int | None = None
    """Images drawn per epoch; None: the data set's size."""
    schedule: str = "cosine"
    """constant or cosine (over the whole run, per iteration)."""
    min_lr_ratio: float = 0.0
    """Cosine floor as a fraction of lr."""


@dataclass
class RunConfig:
    """Everything about the run that is not the method."""

    epochs: int = 4
    seed: int = 0
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (cuda when available)."""
    precision: str = "auto"
    """fp32, bf16 or auto (bf16 on CPUs with native bf16 support and on CUDA GPUs that have it)."""
    out: str | None = None
    """Run directory; None: runs/<method>-<date>-<time>."""
    checkpoint_every: int = 100
    """Iterations between two mid-epoch checkpoints (0: only at the end of each epoch)."""
    save_features: bool = False
    """Write the last epoch's clustering features to `features.npy`."""
    progress: bool = True
    max_minutes: float | None = None
    """Time budget: stop before an epoch that would end past this many minutes (the schedule still spans
    `epochs`); None: run every epoch."""
    threads: int | None = None
    """CPU threads for torch and faiss; None: their defaults."""
    report: bool = True
    """Build the run's HTML report (`RUN/report/index.html`) when training ends."""
    dist_timeout_minutes: float = 180.0
    """Under torchrun: how long a process waits for the others in one collective (the first process decodes
    and clusters while the others wait)."""


@dataclass
class TrainConfig:
    """A whole run's settings."""

    method: str = "deepcluster"
    preset: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sela: SelaConfig = field(default_factory=SelaConfig)
    deepercluster: DeeperClusterConfig = field(default_factory=DeeperClusterConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), ready for YAML."""
        return _plain(dataclasses.asdict(self))

    def validate(self) -> None:
        """Check every option that can be checked without the data; raise ConfigError naming the first bad one."""
        validate_config(self)


METHODS = ("deepcluster", "deepercluster", "sela", "transfer")
SELA_SPACINGS = ("quadratic", "linear")
SELA_VIEWS = ("cluster", "train")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")
KMEANS_BACKENDS = ("auto", "faiss", "torch")

PRESETS: dict[str, dict[str, Any]] = {
    # For small data within minutes on a CPU: crops down to 20% of the image, colour jitter, over-clustering at
    # ~10x the expected classes, batch 128 with cosine decay, 4 epochs (about 6 minutes for the embedded 10,000
    # images on 2 cores; see benchmarks/learns.py). The dataclass defaults above are this preset.
    "default": {},
    # A plain reading of Caron et al. (2018): crop and flip only, constant lr 0.05, RandomResizedCrop's
    # default scale range, k = 10,000 (lower it with --k on small data).
    "paper": {
        "augment": {"crop_scale": [0.08, 1.0], "color_jitter": 0.0, "grayscale_prob": 0.0},
        "cluster": {"k": 10000},
        "optim": {"lr": 0.05, "schedule": "constant", "batch_size": 256},
        "run": {"epochs": 500},
    },
}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "cluster": ClusterConfig,
    "sela": SelaConfig,
    "deepercluster": DeeperClusterConfig,
    "transfer": TransferConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}


def _coerce(section: str, name: str, current: Any, value: Any) -> Any:
    """Convert a YAML/CLI value to the type of the default it replaces (tuples from lists)."""
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(current):
            raise ConfigError(f"{section}.{name}: expected a list of {len(current)} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    return value


def apply_overrides(config: TrainConfig, overrides: Mapping[str, Any], origin: str = "config") -> TrainConfig:
    """Return a copy of `config` with nested `overrides` ({"optim": {"lr": 0.1}, "method": ...}) applied.

    Unknown sections or keys raise ConfigError naming them and where they came from.
    """
    new = dataclasses.replace(config)
    for key, value in overrides.items():
        if key in ("method", "preset"):
            setattr(new, key, value)
            continue
        if key not in _SECTIONS:
            known = ", ".join(["method", "preset", *_SECTIONS])
            raise ConfigError(f"{origin}: unknown section {key!r}; known sections: {known}")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{origin}: section {key!r} must be a mapping of options, got {value!r}")
        section = dataclasses.replace(getattr(new, key))
        valid = {f.name for f in fields(section)}
        for name, item in value.items():
            if name not in valid:
                raise ConfigError(
                    f"{origin}: unknown option {key}.{name}; options of {key}: {', '.join(sorted(valid))}"
                )
            setattr(section, name, _coerce(key, name, getattr(section, name), item))
        setattr(new, key, section)
    return new


def preset_config(name: str) -> TrainConfig:
    """The configuration of a named preset (`default` or `paper`)."""
    if name not in PRESETS:
        raise ConfigError(f"--preset {name}: unknown preset; choose from {', '.join(PRESETS)}")
    config = apply_overrides(TrainConfig(), PRESETS[name], origin=f"preset {name}")
    config.preset = name
    return config


def config_from_dict(raw: Mapping[str, Any], origin: str = "config") -> TrainConfig:
    """Build a config from a nested dict: start from its preset (default: `default`), then apply the rest."""
    preset = raw.get("preset", "default")
    return apply_overrides(preset_config(preset), raw, origin=origin)


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a YAML file written by a run (or by hand) into a TrainConfig."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {path}: not valid YAML ({error})") from error
    if not isinstance(raw, Mapping):
        raise ConfigError(f"--config {path}: expected a mapping of sections at the top level")
    return config_from_dict(raw, origin=f"--config {path}")


def dump_config(config: TrainConfig) -> str:
    """YAML text of every setting."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _positive(value: Any, option: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{option}={value!r}: must be a whole number >= 1")


def _probability(value: float, option: str) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{option}={value!r}: must lie between 0 and 1")


def validate_config(config: TrainConfig) -> None:
    """Raise ConfigError naming the first invalid option (checks that need the data come later)."""
    if config.method not in METHODS:
        raise ConfigError(f"--method {config.method}: unknown method; choose from {', '.join(METHODS)}")
    _positive(config.cluster.k, "--k (cluster.k)")
    if config.cluster.k < 2:
        raise ConfigError(f"--k {config.cluster.k}: k-means needs at least 2 clusters")
    _positive(config.cluster.kmeans_iters, "cluster.kmeans_iters")
    limit = config.data.memory_limit_gb
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
        raise ConfigError(f"data.memory_limit_gb={limit!r}: must be a number of gigabytes > 0")
    if config.cluster.kmeans_backend not in KMEANS_BACKENDS:
        raise ConfigError(
            f"cluster.kmeans_backend={config.cluster.kmeans_backend!r}: choose from {', '.join(KMEANS_BACKENDS)}"
        )
    _positive(config.cluster.recluster_every, "cluster.recluster_every", allow_none=True)
    _positive(config.cluster.kmeans_sample, "cluster.kmeans_sample", allow_none=True)
    _validate_deepercluster(config)
    _validate_sela(config.sela)
    if config.method == "transfer" and not config.transfer.labels:
        raise ConfigError("--method transfer needs --labels RUN_DIR/labels.csv (transfer.labels)")
    if config.method != "transfer" and config.transfer.labels:
        raise ConfigError(
            f"--labels trains on given labels and cannot be combined with --method {config.method}; drop one"
        )
    _positive(config.cluster.pca_sample, "cluster.pca_sample", allow_none=True)
    if config.cluster.pca_dim < 0:
        raise ConfigError(f"cluster.pca_dim={config.cluster.pca_dim}: must be >= 0 (0 turns PCA off)")
    _positive(config.optim.batch_size, "--batch-size (optim.batch_size)")
    _positive(config.optim.epoch_size, "optim.epoch_size", allow_none=True)
    _positive(config.run.epochs, "--epochs (run.epochs)")
    for option, value in (("--lr (optim.lr)", config.optim.lr), ("optim.head_lr", config.optim.head_lr)):
        if value is not None and not float(value) > 0:
            raise ConfigError(f"{option}={value!r}: must be > 0")
    if not 0 <= config.optim.momentum < 1:
        raise ConfigError(f"optim.momentum={config.optim.momentum}: must lie in [0, 1)")
    if config.optim.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay={config.optim.weight_decay}: must be >= 0")
    if config.optim.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={config.optim.schedule!r}: choose from {', '.join(SCHEDULES)}")
    _probability(config.optim.min_lr_ratio, "optim.min_lr_ratio")
    if config.run.precision not in PRECISIONS:
        raise ConfigError(f"--precision {config.run.precision}: choose from {', '.join(PRECISIONS)}")
    if config.run.checkpoint_every < 0:
        raise ConfigError(f"run.checkpoint_every={config.run.checkpoint_every}: must be >= 0")
    _positive(config.run.threads, "run.threads", allow_none=True)
    if not float(config.run.dist_timeout_minutes) > 0:
        raise ConfigError(f"run.dist_timeout_minutes={config.run.dist_timeout_minutes}: must be > 0")
    if config.run.max_minutes is not None and not float(config.run.max_minutes) > 0:
        raise ConfigError(f"run.max_minutes={config.run.max_minutes}: must be > 0 (or unset for no budget)")
    device = config.run.device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"--device {device}: choose cpu, cuda, cuda:N or auto")
    _positive(config.data.input_size, "--input-size (data.input_size)", allow_none=True)
    _positive(config.data.resize, "data.resize", allow_none=True)
    if config.data.input_size and config.data.resize and config.data.resize < config.data.input_size:
        raise ConfigError(
            f"data.resize={config.data.resize} is smaller than data.input_size={config.data.input_size}; "
            "resize must be >= input_size"
        )
    low, high = config.augment.crop_scale
    if not 0 < low <= high <= 1:
        raise ConfigError(f"augment.crop_scale={list(config.augment.crop_scale)}: need 0 < low <= high <= 1")
    low, high = config.augment.crop_ratio
    if not 0 < low <= high:
        raise ConfigError(f"augment.crop_ratio={list(config.augment.crop_ratio)}: need 0 < low <= high")
    if config.augment.color_jitter < 0:
        raise ConfigError(f"augment.color_jitter={config.augment.color_jitter}: must be >= 0")
    _probability(config.augment.grayscale_prob, "augment.grayscale_prob")
    if any(s <= 0 for s in config.data.std):
        raise ConfigError(f"data.std={list(config.data.std)}: every value must be > 0")


def _validate_sela(sela: SelaConfig) -> None:
    _positive(sela.heads, "sela.heads")
    _positive(sela.updates, "sela.updates", allow_none=True)
    _positive(sela.check_every, "sela.check_every")
    _positive(sela.max_iters, "sela.max_iters")
    if sela.lam is not None and not float(sela.lam) > 0:
        raise ConfigError(f"sela.lam={sela.lam!r}: must be > 0 (or unset: 25, 10 for small images)")
    for option, value in (("sela.tolerance", sela.tolerance), ("sela.chunk_mb", sela.chunk_mb)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{option}={value!r}: must be a number > 0")
    if sela.spacing not in SELA_SPACINGS:
        raise ConfigError(f"sela.spacing={sela.spacing!r}: choose from {', '.join(SELA_SPACINGS)}")
    if sela.view not in SELA_VIEWS:
        raise ConfigError(f"sela.view={sela.view!r}: choose from {', '.join(SELA_VIEWS)}")


def _validate_deepercluster(config: TrainConfig) -> None:
    deeper = config.deepercluster
    _positive(deeper.super_clusters, "deepercluster.super_clusters")
    if config.method == "deepercluster" and config.cluster.k % deeper.super_clusters:
        raise ConfigError(
            f"--k {config.cluster.k} is not a multiple of deepercluster.super_clusters={deeper.super_clusters}: "
            "every super-cluster is split into k / m sub-clusters; choose k as a multiple of m"
        )
