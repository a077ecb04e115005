"""What DeepCluster-v2 and SeLa-v2 share (Caron et al., NeurIPS 2020, the SwAV paper's appendix): a projection
head with sets of prototypes, multi-crop, a memory bank filled by the training pass, and the loss.

Each training step sees `n_large` large crops and `n_small` small crops of every image; the network maps each
crop to an L2-normalised projection z and scores it against every set of prototypes by cosine similarity. The
loss is the cross-entropy of score / T against the image's label in each set, averaged over sets and crops.
A label update clusters the projections of a cluster-view pass over the data (`labels_from=pass`, the default:
the cleaner clusters at small scale) or, as in the SwAV code, a memory bank ([n_large, N, d]) of the detached z
of the large crops written by the training pass (`labels_from=bank`: set i clusters the bank of large crop
i mod n_large, and after the first labels an epoch costs the training pass alone). How a set's labels come from
its projections is the method's (`assign_set`), and so is the rule that puts new images into them (`predict`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from deepcluster.config import SMALL_INPUT_LIMIT, ConfigError, TrainConfig, option
from deepcluster.config.options import number, one_of, ordered_pair, positive, whole
from deepcluster.data.samplers import shuffled_sample
from deepcluster.data.views import MultiCropView
from deepcluster.methods.base import Assignment, ExtractingMethod, ProcessGroup, augment_view, cluster_sizes
from deepcluster.models import PrototypeHead, channels_last, takes_any_input_size

LABEL_SOURCES = ("bank", "pass")


@dataclass
class V2Config:
    """Settings shared by the v2 methods."""

    n_sets: int = option(3, "sets of prototypes, each with its own labels (k each)", check=positive)
    temperature: float = option(0.1, "softmax temperature T of the cosine scores", check=number(0))
    hidden: int = option(
        2048, "width of the projection head's hidden layer (0: one linear layer)", check=whole(0)
    )
    out_dim: int = option(
        128,
        "size of the L2-normalised projection (0: no projection head, z is the normalised embedding)",
        check=whole(0),
    )
    online: bool = option(
        False,
        "each step's targets are the nearest prototype (in each set) of the step's own large-crop projections, "
        "as in online deep clustering; the prototypes are re-estimated at every label update",
    )
    variance_weight: float = option(
        0.0,
        "weight of a variance term against collapse (as VICReg): the mean over projection dimensions of "
        "max(0, 1/sqrt(d) - std), over a step's large crops",
        check=number(0, above=False),
    )
    n_large: int = option(2, "large crops per image (random resized crops at the input size)", check=positive)
    n_small: int = option(4, "small crops per image", check=whole(0))
    small_size: int | None = option(
        None,
        "side of the small crops (default: half the input size; the input size with AlexNet or VGG, whose FC "
        "layers take one size)",
        check=whole(8, optional=True),
    )
    large_scale: tuple[float, float] = option(
        (0.14, 1.0), "area range of the large crops", check=ordered_pair(1.0)
    )
    small_scale: tuple[float, float] = option(
        (0.05, 0.14), "area range of the small crops", check=ordered_pair(1.0)
    )
    labels_from: str = option(
        "pass",
        "where label updates read the images' projections: pass (a cluster-view pass over the data before each "
        "update: cleaner clusters, for about 8 percent of a 6-crop epoch's time) or bank (filled by the training "
        "pass, as in the SwAV code: no pass after the first, for large collections)",
        check=one_of(*LABEL_SOURCES),
    )
    final_labels: str = option(
        "pass",
        "with labels_from=bank, where the last labels (after the last step: labels.csv) read the projections: pass "
        "(a cluster-view pass of the trained network, whose clusters are cleaner than the bank's) or bank",
        check=one_of(*LABEL_SOURCES),
    )


@dataclass
class SetLabels:
    """One prototype set's labels, from its projections [N, d]."""

    labels: np.ndarray
    """int64 [N]."""
    prototypes: np.ndarray
    """[k, d] unit vectors: the set's centroids (DeepCluster-v2) or trained prototypes (SeLa-v2)."""
    stats: dict[str, float]
    """Logged (the mean over sets), e.g. kmeans_loss; n_empty: the set's empty clusters (summed over sets)."""
    state: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-set arrays `predict` needs besides the prototypes (stacked over sets), e.g. SeLa-v2's log_beta."""


class V2Method(ExtractingMethod):
    """The shared network, crops, bank, loss and checkpoint state of the v2 methods."""

    trainable_prototypes: ClassVar[bool] = False
    """Train the prototypes (SeLa-v2), or set them to the centroids and never train them (DeepCluster-v2)."""
    defaults = {
        "run": {"epochs": 5},  # the main job's budget on the embedded split (benchmarks/learns.py)
        "model": {"sobel": False},
        "optim": {"weight_decay": 1e-6},
        "augment": {"color_jitter": 0.8, "jitter_prob": 0.8, "grayscale_prob": 0.2, "blur_prob": 0.5},
    }

    def __init__(self, config: TrainConfig, device: torch.device | None = None) -> None:
        super().__init__(config, device)
        self.bank: torch.Tensor | None = None
        """[n_large, N, out_dim] float32: the last projection of each large crop of every image."""

    @classmethod
    def default_arch(cls, input_size: int) -> str:
        """Networks with global pooling, so that small crops pass at their own size: the small AlexNet's convs up
        to 96 px, ResNet-18 above."""
        return "alexnet_small_gap" if input_size <= SMALL_INPUT_LIMIT else "resnet18"

    @property
    def v2(self) -> V2Config:
        return self.config.section(self.section())

    # ------------------------------------------------------------ crops, network, loss
    def train_view(self) -> MultiCropView:
        cfg, v2 = self.config, self.v2
        size = int(cfg.data.input_size)
        small = v2.small_size or max(8, size // 2)
        if not takes_any_input_size(str(cfg.model.arch)):
            small = size
        large_view = augment_view(cfg, size, v2.large_scale)
        small_view = augment_view(cfg, small, v2.small_scale) if v2.n_small else None
        return MultiCropView(large_view, small_view, n_large=v2.n_large, n_small=v2.n_small)

    def build_heads(self, feature_dim: int, assignment: Assignment, generator: torch.Generator) -> nn.Module:
        v2 = self.v2
        return PrototypeHead(
            feature_dim,
            assignment.n_classes,
            v2.n_sets,
            hidden=v2.hidden if v2.out_dim else 0,
            out_dim=v2.out_dim or None,
            trainable=self.trainable_prototypes,
            generator=generator,
        )

    def initial_heads(self, feature_dim: int, generator: torch.Generator) -> nn.Module:
        """The first labels cluster projections: the projection head (with random prototypes) comes first."""
        blank = Assignment(labels=np.zeros(0, dtype=np.int64), n_classes=self.config.cluster.k)
        return self.build_heads(feature_dim, blank, generator)

    def keep_heads(self, heads: nn.Module, assignment: Assignment) -> bool:
        """The projection head and the prototypes are kept across label updates."""
        return True

    def forward(
        self,
        backbone: nn.Module,
        heads: nn.Module,
        x: list[torch.Tensor],
        labels: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """((z of the large crops [n_large, B, d], scores of every crop [n_crops, B, n_sets, k]), labels); crops
        of one size go through the network as one batch."""
        by_size = groupby(x, key=lambda crop: crop.shape[-1])
        parts = [heads(backbone(channels_last(torch.cat(list(same))))) for _, same in by_size]
        z, scores = (torch.cat(out).unflatten(0, (len(x), x[0].shape[0])) for out in zip(*parts, strict=True))
        if self.v2.online:  # the nearest prototype of the large crops' mean projection, in each set
            labels = scores[: self.v2.n_large].detach().float().mean(dim=0).argmax(dim=-1)
        return (z[: self.v2.n_large], scores), labels

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Mean over crops and sets of the cross-entropy of score / T against the image's label in the set (plus
        `variance_weight` times the variance term of the large crops' projections)."""
        loss = v2_loss(outputs[1], targets, self.v2.temperature)
        if self.v2.variance_weight:
            loss = loss + self.v2.variance_weight * variance_term(outputs[0].flatten(0, 1))
        return loss

    @classmethod
    def fit_to_data(cls, config: TrainConfig, n_images: int, feature_dim: int | None) -> TrainConfig:
        """The projection head's batch norm needs two rows per forward: crops of one size of a step's images."""
        config = super().fit_to_data(config, n_images, feature_dim)
        v2, optim, name = config.section(cls.section()), config.optim, cls.section()
        images = min(optim.batch_size, optim.epoch_size or n_images)
        crops = min(v2.n_large, v2.n_small or v2.n_large)
        if v2.hidden and images * crops < 2:
            raise ConfigError(
                f"--batch-size {images}: the batch norm of {name}'s projection head needs at least 2 crops of one "
                f"size per step, and a step has {images} image(s) x {crops} crop(s); use --batch-size 2 or more "
                f"(and --epoch-size 2 or more), or {name}.hidden=0"
            )
        return config

    def sample(self, labels: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
        return shuffled_sample(labels.shape[0], n_samples, seed=seed)

    # ------------------------------------------------------------ labels
    def observe(
        self, rows: torch.Tensor, outputs: tuple[torch.Tensor, torch.Tensor], processes: ProcessGroup
    ) -> None:
        """Write the detached projections of the step's large crops into the bank rows of its images (under
        torchrun, those of every process's part of the batch, gathered: the process that assigns holds them all)."""
        if self.v2.labels_from != "bank":  # every update extracts: no bank to keep
            return
        rows = processes.all_gather_tensor(rows.to(processes.device))
        z = processes.all_gather_tensor(outputs[0].detach().float(), dim=1)
        if self.bank is not None:
            self.bank[:, rows.cpu()] = z.cpu()

    def extract(self, backbone: nn.Module, heads: nn.Module | None, images: torch.Tensor) -> torch.Tensor:
        """The projection z of the cluster view (the first labels, and labels_from=pass)."""
        if not isinstance(heads, PrototypeHead):
            raise RuntimeError(f"{self.name} extracts through its projection head, which must exist first")
        return heads.project(backbone(images)).float()

    def assign(self, values: np.ndarray, heads: nn.Module | None, seed: int) -> Assignment:
        """Every set's labels from the extracted projections; with labels_from=bank they also fill the bank,
        which later updates read."""
        values = np.ascontiguousarray(values, dtype=np.float32)
        if self.v2.labels_from != "bank":
            return self._assign_sets(lambda _: values, heads, seed)
        self.bank = torch.from_numpy(values).unsqueeze(0).repeat(self.v2.n_large, 1, 1)
        return self.assign_stored(heads, seed, last=False)

    def assign_stored(self, heads: nn.Module | None, seed: int, last: bool) -> Assignment | None:
        """Labels from the bank (set s from large crop s mod n_large), when the bank is the source."""
        bank = self.bank
        if bank is None or (self.v2.final_labels if last else self.v2.labels_from) == "pass":
            return None
        return self._assign_sets(lambda s: bank[s % bank.shape[0]].numpy(), heads, seed)

    def _assign_sets(
        self, projections: Callable[[int], np.ndarray], heads: nn.Module | None, seed: int
    ) -> Assignment:
        """Every set's labels from its projections [N, d] (`projections(set)`)."""
        k = self.config.cluster.k
        sets = [self.assign_set(projections(s), heads, s, seed) for s in range(self.v2.n_sets)]
        labels = np.stack([one.labels for one in sets], axis=1)
        empty = [
            int(one.stats["n_empty"]) for one in sets
        ]  # the assigner's own count (k-means: before repair)
        stats: dict[str, Any] = {**cluster_sizes(labels, k), "n_empty": sum(empty), "n_empty_sets": empty}
        means = [key for key in sets[0].stats if key != "n_empty"]
        stats.update({key: float(np.mean([one.stats[key] for one in sets])) for key in means})
        return Assignment(labels=labels, n_classes=k, stats=stats, state=self.assignment_state(sets))

    def assignment_state(self, sets: list[SetLabels]) -> dict[str, Any]:
        """What `predict` needs of an assignment: every set's prototypes and per-set state, stacked."""
        arrays = {"prototypes": [one.prototypes for one in sets]}
        arrays.update({key: [one.state[key] for one in sets] for key in sets[0].state})
        return {key: np.stack(values) for key, values in arrays.items()}

    @abstractmethod
    def assign_set(
        self, projections: np.ndarray, heads: nn.Module | None, index: int, seed: int
    ) -> SetLabels:
        """Set `index`'s labels and prototypes from projections [N, d] (a pass's or the bank's) and the heads."""

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank = state.get("bank")


def unit_rows(values: np.ndarray) -> np.ndarray:
    """float64 rows of `values` scaled to unit length (a zero row stays zero)."""
    z = values.astype(np.float64)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def prototypes_of(state: dict[str, Any]) -> np.ndarray:
    """The sets' prototypes [n_sets, k, d] of an assignment's state (runs before 0.1's renaming: "centroids")."""
    return state["prototypes"] if "prototypes" in state else state["centroids"]


def variance_term(z: torch.Tensor) -> torch.Tensor:
    """VICReg's variance hinge for unit vectors z [N, d]: the mean over dimensions of max(0, 1/sqrt(d) - std),
    zero when every dimension spreads as much as uniformly scattered unit vectors do."""
    target = z.shape[1] ** -0.5
    return torch.relu(target - torch.sqrt(z.float().var(dim=0) + 1e-8)).mean()


def v2_loss(scores: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """scores [n_crops, B, n_sets, k] cosine similarities, targets [B, n_sets] -> the mean cross-entropy."""
    n_crops, batch, n_sets, k = scores.shape
    if targets.shape != (batch, n_sets):
        raise ValueError(f"v2_loss: targets {tuple(targets.shape)} do not match scores {tuple(scores.shape)}")
    logits = scores.float().div(temperature).reshape(-1, k)
    expanded = targets.long().unsqueeze(0).expand(n_crops, batch, n_sets).reshape(-1)
    return nn.functional.cross_entropy(logits, expanded)
