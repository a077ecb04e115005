"""The settings sections every run has: data, augment, model, cluster, optim and run.

Each field is declared once with `option` (default, help, flag, checks, whether a resume may change it). A
section may define `check(config)` for rules that join several options. Methods declare their own sections
beside their code (see `deepcluster.methods`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepcluster.config.options import (
    ConfigError,
    fraction,
    number,
    one_of,
    option,
    ordered_pair,
    positive,
    positive_or_none,
    whole,
)
from deepcluster.config.run import RunConfig

SMALL_INPUT_LIMIT = 96
"""Inputs of at most this many pixels are "small images": their own size, small-input models, SeLa's lambda 10."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCHEDULES = ("constant", "cosine")
KMEANS_BACKENDS = ("auto", "faiss", "torch")
CLUSTERINGS = ("kmeans", "pic")
PCA_BACKENDS = ("auto", "numpy", "torch")
OPTIMIZERS = ("sgd", "lars")


def default_resize(input_size: int) -> int:
    """Side images are resized to before cropping `input_size`: the input itself for small inputs, else in the
    ImageNet ratio 256 / 224."""
    return input_size if input_size <= SMALL_INPUT_LIMIT else round(input_size * 256 / 224)


def _all_positive(values: Any) -> str | None:
    return None if all(v > 0 for v in values) else "every value must be > 0"


CACHES = ("auto", "memory", "disk", "stream")


@dataclass
class DataConfig:
    """Where the images come from and how they are shown to the network."""

    data: str | None = option(
        None,
        "image folder, .npz archive, file list, or data set name (cifar10, stl10, ...); "
        "none: the embedded CIFAR-10 test split",
        flag="--data",
    )
    data_root: str | None = option(
        None, "root folder of a named torchvision data set (default ./data)", flag="--data-root"
    )
    split: str | None = option(
        None, "split of an archive or named data set (default: its training split)", flag="--split"
    )
    download: bool = option(False, "let torchvision download a named data set", flag="--download")
    input_size: int | None = option(
        None,
        "side in pixels of the square the network sees (default: the images' own size up to 96 px, else 224)",
        flag="--input-size",
        check=positive_or_none,
    )
    resize: int | None = option(
        None,
        "side images are resized to (shorter side) and centre-cropped to once, at decoding; "
        "none: from input_size",
        check=positive_or_none,
    )
    mean: tuple[float, float, float] = option(IMAGENET_MEAN, "per-channel mean of the normalisation")
    std: tuple[float, float, float] = option(
        IMAGENET_STD, "per-channel standard deviation of the normalisation", check=_all_positive
    )
    decode_threads: int | None = option(
        None, "threads decoding images (default: all cores)", check=positive_or_none
    )
    cache: str = option(
        "auto",
        "where decoded images live: memory (decoded once into RAM), disk (once into a memory-mapped file in "
        "cache_dir), stream (decoded for each batch by data threads, no cache), auto (memory when the cache "
        "fits memory_limit_gb, else stream)",
        check=one_of(*CACHES),
    )
    memory_limit_gb: float = option(
        16.0,
        "largest decoded-image cache (uint8, with cache=auto) and extracted-values array (float32) kept in RAM; "
        "a larger array of values is a memory-mapped file in cache_dir",
        check=number(0, optional=False),
    )
    cache_dir: str | None = option(
        None,
        "folder of the memory-mapped cache (default: the run directory; the file is removed when the run ends)",
    )

    def check(self, config: Any) -> None:
        """Rules across options (`config`: the whole `TrainConfig`)."""
        if self.input_size and self.resize and self.resize < self.input_size:
            raise ConfigError(
                f"data.resize={self.resize} is smaller than data.input_size={self.input_size}; "
                "resize must be >= input_size"
            )


@dataclass
class AugmentConfig:
    """The train view: random resized crop, flip and optional colour changes, applied to whole batches."""

    crop_scale: tuple[float, float] = option(
        (0.2, 1.0), "range of the crop's share of the image area", check=ordered_pair(1.0)
    )
    crop_ratio: tuple[float, float] = option(
        (3 / 4, 4 / 3), "range of the crop's aspect ratio", check=ordered_pair()
    )
    flip: bool = option(True, "random horizontal flips")
    color_jitter: float = option(
        0.4, "strength of brightness/contrast/saturation jitter (0: off)", check=number(0, above=False)
    )
    grayscale_prob: float = option(0.0, "probability of turning a crop grayscale", check=fraction)
    jitter_prob: float = option(1.0, "share of the crops whose colours are jittered", check=fraction)
    blur_prob: float = option(
        0.0,
        "share of the crops blurred by a Gaussian (crops of at least augment.blur_min_size px only)",
        check=fraction,
    )
    blur_min_size: int = option(
        96, "crops smaller than this are never blurred (SwAV's rule: blur hurts small images)", check=positive
    )


@dataclass
class ModelConfig:
    """The backbone."""

    arch: str | None = option(
        None,
        "alexnet, alexnet_small, alexnet_small_gap, vgg16, vgg16_small, resnet18, resnet18_small, resnet50 "
        "(default: the method's: AlexNet sized for the input; the v2 methods: alexnet_small_gap up to 96 px, "
        "else resnet18)",
        flag="--arch",
    )
    sobel: bool = option(True, "feed Sobel-filtered grayscale (off: RGB)", flag="--no-sobel")
    first_conv: str = option(
        "random",
        "the first convolution's filters at the start: random, patches (whitening filters of the training images' "
        "patches, as in Coates and Ng 2011 and fast CIFAR training: the top principal directions, each scaled to "
        "unit variance, with their negatives; then trained) or patches_frozen (kept fixed)",
        check=one_of("random", "patches", "patches_frozen"),
    )


@dataclass
class ClusterConfig:
    """How features become pseudo-labels."""

    algorithm: str = option(
        "kmeans",
        "how DeepCluster (v1) clusters: kmeans (cluster.k clusters) or pic (Power Iteration Clustering on a "
        "graph of nearest neighbours, as the official code's --clustering PIC: the number of clusters is found, "
        "cluster.k plays no part)",
        flag="--clustering",
        metavar="{kmeans,pic}",
        check=one_of(*CLUSTERINGS),
    )
    k: int = option(100, "number of clusters", flag="--k", check=whole(2))
    pca_dim: int = option(256, "PCA-whitening output size (0 turns PCA off)", check=whole(0))
    pca_sample: int | None = option(
        None,
        "train the PCA on this many images (at least 2; default: all of them)",
        check=whole(2, optional=True),
    )
    pca_backend: str = option(
        "auto",
        "numpy (CPU), torch (products and eigensolver on the run's device) or auto: torch on a CUDA run, numpy "
        "otherwise",
        check=one_of(*PCA_BACKENDS),
    )
    kmeans_iters: int = option(20, "k-means iterations", check=positive)
    kmeans_sample: int | None = option(
        None,
        "train k-means on this many points drawn at random, then assign every point in batches (default: "
        "train on all of them); bounds k-means' time and memory on large collections",
        check=positive_or_none,
    )
    kmeans_backend: str = option(
        "auto",
        "faiss (CPU), torch (on the run's device) or auto: torch on a CUDA run, faiss otherwise",
        check=one_of(*KMEANS_BACKENDS),
    )
    pic_nnn: int = option(5, "PIC: nearest neighbours of each image in the graph", check=positive)
    pic_sigma: float = option(
        0.2, "PIC: bandwidth of the edge weights exp(-d / sigma^2) (d: squared distance)", check=number(0)
    )
    pic_alpha: float = option(
        0.001,
        "PIC: weight of the graph in the power iteration v <- alpha W v + (1 - alpha) / N",
        check=number(0, high=1),
    )
    pic_iters: int = option(200, "PIC: power iterations", check=positive)
    pic_singletons: bool = option(
        True,
        "PIC: move each image alone in its cluster to the cluster of its nearest neighbour in a larger one",
    )
    recluster_every: int | None = option(
        None,
        "epochs between two clusterings (default: the method's own, e.g. DeepCluster 1, DeeperCluster 3)",
        check=positive_or_none,
    )
    label_every: int | None = option(
        None,
        "training steps between two label updates (default: at the start of every cluster.recluster_every-th "
        "epoch; SeLa spreads sela.updates instead)",
        check=positive_or_none,
    )
    hold_labels: float = option(
        0.0,
        "share of the run's steps during which the first labels are kept: updates scheduled before it are "
        "skipped",
        check=fraction,
    )
    label_view: str = option(
        "color",
        "what the labelling passes see: color (the cluster view) or grayscale (colour hidden from the labels; "
        "training still sees colour)",
        check=one_of("color", "grayscale"),
    )
    distributed_kmeans: bool = option(
        False,
        "under torchrun: k-means over the processes' shards (all-reduced) instead of gathering the features",
        flag="--distributed-kmeans",
    )

    def check(self, config: Any) -> None:
        """Rules across options (`config`: the whole `TrainConfig`)."""
        if self.algorithm == "pic" and self.distributed_kmeans:
            raise ConfigError(
                "--clustering pic with --distributed-kmeans: PIC's graph of nearest neighbours needs every "
                "image's features on one process; drop --distributed-kmeans (cluster.distributed_kmeans)"
            )


@dataclass
class OptimConfig:
    """SGD for the body and for the top layer."""

    optimizer: str = option(
        "sgd", "sgd, or lars (layer-wise adaptive rates, as SwAV)", check=one_of(*OPTIMIZERS)
    )
    lr: float = option(0.05, "learning rate", flag="--lr", check=number(0))
    momentum: float = option(0.9, "SGD momentum", check=number(0, above=False, high=1))
    weight_decay: float = option(1e-5, "SGD weight decay", check=number(0, above=False))
    head_lr: float | None = option(
        None, "learning rate of the top layer (default: lr)", check=number(0, optional=True)
    )
    batch_size: int = option(
        128,
        "training batch (under torchrun: the total over all processes)",
        flag="--batch-size",
        check=positive,
    )
    epoch_size: int | None = option(
        None,
        "images drawn per epoch (default: the data set's size)",
        flag="--epoch-size",
        check=positive_or_none,
    )
    schedule: str = option(
        "cosine", "constant or cosine (over the whole run, per step)", check=one_of(*SCHEDULES)
    )
    min_lr_ratio: float = option(0.0, "cosine floor as a fraction of lr", check=fraction)
    warmup_epochs: float = option(
        0.0,
        "linear warm-up of the learning rate from 0 over this many epochs, then the schedule",
        check=number(0, above=False),
    )


CORE_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "cluster": ClusterConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}
"""The sections of every run, by name (methods add their own)."""
