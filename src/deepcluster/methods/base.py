"""The small interface between the training engine and a method of the family.

A method makes three choices: what is extracted from each image for labelling, how labels are assigned, and
which heads and loss train the network. Everything else (data, loop, checkpoints, logs) is the engine's. A method
that labels from the network's outputs is an `ExtractingMethod`; one whose labels are given (label transfer) is
a plain `Method`. A method may declare its own settings section (`Config`, named after the method).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from deepcluster.config import SMALL_INPUT_LIMIT, ConfigError, TrainConfig
from deepcluster.data.samplers import uniform_cluster_sample
from deepcluster.data.views import ClusterView, TrainView
from deepcluster.methods.predict import Prediction
from deepcluster.models import channels_last

View = Callable[[torch.Tensor, torch.Generator], Any]
"""A train view: uint8 images [B, 3, S, S] and a generator -> the network's input (a tensor, or a list of
crops for multi-crop methods)."""

ImageView = Callable[[torch.Tensor], torch.Tensor]
"""An extraction view: uint8 images [B, 3, S, S] -> the network's input."""


@dataclass
class Assignment:
    """Pseudo-labels for every image and what the assigner measured on the way."""

    labels: np.ndarray
    """int64 [N] (one head) or [N, H] (one column per head), ids in 0..n_classes-1."""
    n_classes: int
    stats: dict[str, float] = field(default_factory=dict)
    """Logged per epoch, e.g. kmeans_loss, n_empty."""
    state: dict[str, Any] = field(default_factory=dict)
    """Arrays worth keeping with the run (e.g. centroids)."""


class ProcessGroup(Protocol):
    """What a sharded assignment knows of the run's processes (the engine's `Processes` is one)."""

    rank: int
    world_size: int
    device: torch.device
    """Where collective tensors live."""

    def all_gather_tensor(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Every process's `tensor` (equal shapes), concatenated along `dim` in rank order; `tensor` itself in
        one process."""
        ...


def primary_labels(labels: np.ndarray) -> np.ndarray:
    """The first head's labels: what labels.csv's `cluster` column, the sampler and the headline metrics use."""
    return labels if labels.ndim == 1 else labels[:, 0]


def augment_view(config: TrainConfig, size: int, scale: tuple[float, float]) -> TrainView:
    """The `augment` section's train view, cropping `scale` of the image area to `size` pixels."""
    aug, data = config.augment, config.data
    blur = aug.blur_prob if size >= aug.blur_min_size else 0.0
    return TrainView(
        size,
        data.mean,
        data.std,
        scale=scale,
        ratio=aug.crop_ratio,
        flip=aug.flip,
        color_jitter=aug.color_jitter,
        grayscale_prob=aug.grayscale_prob,
        jitter_prob=aug.jitter_prob,
        blur_prob=blur,
    )


class Method(ABC):
    """One method of the DeepCluster family.

    Every hook below has a default that does what most methods do; a method overrides only where it differs
    (docs/ARCHITECTURE.md lists them). Labels are (re)assigned before the global training steps
    `label_update_steps` lists.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    """One line for the command line's help."""
    defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    """Settings this method starts from when it is chosen, over the core defaults and under the preset and the
    user's own (e.g. {"optim": {"weight_decay": 1e-6}})."""
    Config: ClassVar[type | None] = None
    """The method's own settings section (a dataclass of `option` fields), reachable as `config.<name>`; it may
    define `check(config)` for rules across sections."""
    clusterings: ClassVar[tuple[str, ...]] = ("kmeans",)
    """The `cluster.algorithm` choices the method labels with (`--clustering`); the engine refuses the others."""

    def __init__(self, config: TrainConfig, device: torch.device | None = None) -> None:
        self.config = config
        self.device = device if device is not None else torch.device("cpu")
        """Where the method's own computations (torch k-means, Sinkhorn) run: the run's device."""

    # ------------------------------------------------------------ settings
    @classmethod
    def default_arch(cls, input_size: int) -> str:
        """The backbone when `model.arch` is not set: DeepCluster's AlexNet, its small-input variant up to 96 px."""
        return "alexnet_small" if input_size <= SMALL_INPUT_LIMIT else "alexnet"

    @classmethod
    def section(cls) -> str:
        """The name of the method's settings section: its name with `-` as `_` (`config.deepcluster_v2`)."""
        return cls.name.replace("-", "_")

    @classmethod
    def fit_to_data(cls, config: TrainConfig, n_images: int, feature_dim: int | None) -> TrainConfig:
        """`config` as this method's settings fit `n_images` images: ConfigError (naming the option, its value
        and the fix) for a setting they make impossible, a copy with a setting that is an upper bound lowered
        (with a warning) where the data cannot reach it. `feature_dim` is the backbone's embedding size once the
        images are decoded (`n_images` then counts the readable ones); None before, when `n_images` is the
        source's size and only refusals are due. Default: `cluster.k` clusters need at least k images."""
        k = config.cluster.k
        if k > n_images:
            raise ConfigError(
                f"--k {k} is larger than the number of images ({n_images}); use --k {n_images} or less"
            )
        return config

    # ------------------------------------------------------------ labels
    def label_update_steps(self, steps_per_epoch: int, epochs: int) -> list[int]:
        """Sorted global steps before which labels are assigned; `epochs * steps_per_epoch` means after the last.

        Default: `regular_updates` at the start of every `cluster.recluster_every`-th epoch (every epoch when
        unset), or every `cluster.label_every` steps."""
        return regular_updates(self.config, steps_per_epoch, epochs, self.config.cluster.recluster_every or 1)

    def initial_assignment(
        self, indices: np.ndarray, name_of: Callable[[int], str], seed: int
    ) -> Assignment | None:
        """Labels given before any network output (SeLa's random start, transferred labels); None (the
        default): the first labels come from the network."""
        return None

    # ------------------------------------------------------------ heads
    @abstractmethod
    def build_heads(self, feature_dim: int, assignment: Assignment, generator: torch.Generator) -> nn.Module:
        """Freshly initialised head(s) predicting the assignment's labels from the backbone's embedding."""

    def initial_heads(self, feature_dim: int, generator: torch.Generator) -> nn.Module | None:
        """Heads for `cluster.k` classes that the first labels are made through (the v2 methods' projection
        head); None (the default): the first heads are built for the first labels."""
        return None

    def keep_heads(self, heads: nn.Module, assignment: Assignment) -> bool:
        """Keep the current `heads` for new labels (adapted to them where the method says so, e.g. prototypes set
        to the new centroids): True; False (the default, DeepCluster's fresh top layer): build new ones."""
        return False

    # ------------------------------------------------------------ training
    def sample(self, labels: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
        """Image indices of one epoch (default: uniform over the first head's clusters)."""
        return uniform_cluster_sample(primary_labels(labels), n_samples, seed=seed)

    def train_view(self) -> View:
        """How a training batch is augmented (default: one random resized crop per image, as `augment` says)."""
        return augment_view(self.config, self.config.data.input_size, self.config.augment.crop_scale)

    def forward(
        self, backbone: nn.Module, heads: nn.Module, x: Any, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[Any, torch.Tensor]:
        """(what `loss` reads, its targets) from the train view's output `x` and the batch's labels (default:
        the heads' outputs of the backbone's embedding, and the labels). Draws only from `generator`."""
        return heads(backbone(channels_last(x))), labels

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch (cross-entropy by default)."""
        return nn.functional.cross_entropy(outputs.float(), targets)

    def observe(self, rows: torch.Tensor, outputs: Any, processes: ProcessGroup) -> None:
        """Called on every process after every training step with this process's image rows of the batch and
        `forward`'s outputs (e.g. to fill a memory bank; `processes` gathers the other processes' parts).
        Default: nothing."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the method keeps between steps (e.g. a memory bank), for the checkpoint. Default: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what `state_dict` returned."""
        return None


class ExtractingMethod(Method):
    """A method whose labels come from the network: per-image values extracted in eval mode, then assigned."""

    @abstractmethod
    def extract(self, backbone: nn.Module, heads: nn.Module | None, images: torch.Tensor) -> torch.Tensor:
        """Per-batch values the assigner needs (eval mode, on `extract_view`), [B, D]."""

    @abstractmethod
    def assign(self, values: np.ndarray, heads: nn.Module | None, seed: int) -> Assignment:
        """Pseudo-labels for all images from their extracted `values` (and the current `heads`)."""

    def extract_view(
        self, cluster_view: ClusterView, train_view: View, generator: torch.Generator
    ) -> ImageView:
        """The view the extraction sees (default: the cluster view, a centre crop); `generator` seeds a random
        one."""
        return cluster_view

    def assign_stored(self, heads: nn.Module | None, seed: int, last: bool) -> Assignment | None:
        """Labels from what the method stored during training (a memory bank) and its current `heads`, without
        an extraction pass; None (the default): extract. `last`: the update after the run's last step."""
        return None

    def assign_sharded(self, shard: np.ndarray, seed: int, processes: ProcessGroup) -> Assignment:
        """Labels of every image, identical on every process, from this process's rows of the extracted values
        (`cluster.distributed_kmeans` under torchrun: nothing is gathered). Default: not possible."""
        raise NotImplementedError(f"method {self.name} assigns labels on gathered values only")

    @classmethod
    def assigns_sharded(cls) -> bool:
        """Whether the method has `assign_sharded` of its own."""
        return cls.assign_sharded is not ExtractingMethod.assign_sharded

    def predict(self, values: np.ndarray, state: dict[str, Any]) -> Prediction:
        """Labels of images from their extracted `values` [N, D] by the rule of the assignment that left
        `state` (the run's final assignment: RUN/assigner.pt), without changing it: nearest centroid, largest
        transport score. The final assignment's labels (labels.csv) are this rule on the training images'
        values. Default: not possible."""
        raise NotImplementedError(f"method {self.name} cannot put new images into its clusters")

    def final(self, values: np.ndarray, assignment: Assignment) -> Assignment:
        """The final assignment with its labels made by `predict` (they may differ from the assigner's
        own for the few points its last iteration or empty-cluster repair moved); unchanged when `predict` is
        not possible."""
        try:
            prediction = self.predict(values, assignment.state)
        except NotImplementedError:
            return assignment
        labels = prediction.labels if assignment.labels.ndim == 2 else prediction.labels[:, 0]
        moved = int(np.any((labels != assignment.labels).reshape(len(labels), -1), axis=1).sum())
        stats = {**assignment.stats, "final_moved": moved}
        return Assignment(labels=labels, n_classes=assignment.n_classes, stats=stats, state=assignment.state)


def regular_updates(config: TrainConfig, steps_per_epoch: int, epochs: int, every_epochs: int) -> list[int]:
    """Label updates at the first step of every `every_epochs`-th epoch, or every `cluster.label_every` steps;
    those inside the first `cluster.hold_labels` share of the run's steps (but the first) skipped."""
    cluster, total = config.cluster, steps_per_epoch * epochs
    if cluster.label_every:
        steps = list(range(0, total, cluster.label_every))
    else:
        steps = [epoch * steps_per_epoch for epoch in range(epochs) if epoch % every_epochs == 0]
    return [step for step in steps if step == 0 or step >= cluster.hold_labels * total]


def cluster_sizes(labels: np.ndarray, k: int) -> dict[str, int]:
    """Sizes of the clusters of labels [N] or [N, H] (ids < k): the smallest and largest over every column, and
    how many of the k clusters of the columns are empty (summed over columns)."""
    columns = labels.reshape(len(labels), -1)
    sizes = np.stack([np.bincount(columns[:, h], minlength=k) for h in range(columns.shape[1])])
    return {"n_empty": int((sizes == 0).sum()), "smallest": int(sizes.min()), "largest": int(sizes.max())}
