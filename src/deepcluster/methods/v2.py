"""What DeepCluster-v2 and SeLa-v2 share (Caron et al., NeurIPS 2020, the SwAV paper's appendix): a projection
head with sets of prototypes, multi-crop, a memory bank filled by the training pass, and the loss.

Each training step sees `n_large` large crops and `n_small` small crops of every image; the network maps each
crop to an L2-normalised projection z and scores it against every set of prototypes by cosine similarity. The
loss is the cross-entropy of score / T against the image's label in each set, averaged over sets and crops.
A label update clusters the projections of a cluster-view pass over the data (`labels_from=pass`, the default:
the cleaner clusters at small scale) or, as in the SwAV code, a memory bank ([n_large, N, d]) of the detached z
of the large crops written by the training pass (`labels_from=bank`: set i clusters the bank of large crop
i mod n_large, and after the first labels an epoch costs the training pass alone). How a set's labels come from
its projections is the method's (`assign_bank`).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcluster.config import SMALL_INPUT_LIMIT, ConfigError, TrainConfig, option
from deepcluster.config.options import number, one_of, ordered_pair, positive, whole
from deepcluster.data.samplers import shuffled_sample
from deepcluster.data.views import MultiCropView
from deepcluster.methods.base import Assignment, ExtractingMethod, ProcessGroup, augment_view
from deepcluster.methods.predict import Prediction, most_similar, stack, transport
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
    out_dim: int = option(128, "size of the L2-normalised projection", check=positive)
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


class V2Method(ExtractingMethod):
    """The shared network, crops, bank, loss and checkpoint state of the v2 methods."""

    fresh_heads = False
    extracts_through_heads = True
    trainable_prototypes: bool = False
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
        self.heads: PrototypeHead | None = None
        """The heads of the last label update (SeLa-v2 scores the bank against their prototypes)."""

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
            feature_dim, assignment.n_classes, v2.n_sets, hidden=v2.hidden, out_dim=v2.out_dim,
            trainable=self.trainable_prototypes, generator=generator,
        )  # fmt: skip

    def forward(
        self, backbone: nn.Module, heads: nn.Module, crops: list[torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z of the large crops [n_large, B, d], scores of every crop [n_crops, B, n_sets, k]); crops of one
        size go through the network as one batch."""
        batch = crops[0].shape[0]
        z_parts, score_parts = [], []
        start = 0
        while start < len(crops):
            stop = start
            while stop < len(crops) and crops[stop].shape[-1] == crops[start].shape[-1]:
                stop += 1
            z, scores = heads(backbone(channels_last(torch.cat(crops[start:stop]))))
            z_parts.append(z)
            score_parts.append(scores)
            start = stop
        z = torch.cat(z_parts).unflatten(0, (len(crops), batch))
        scores = torch.cat(score_parts).unflatten(0, (len(crops), batch))
        return z[: self.v2.n_large], scores

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Mean over crops and sets of the cross-entropy of score / T against the image's label in the set."""
        return v2_loss(outputs[1], targets, self.v2.temperature)

    def fit_to_data(self, config: TrainConfig, n_images: int, feature_dim: int | None) -> TrainConfig:
        """The projection head's batch norm needs two rows per forward: crops of one size of a step's images."""
        v2, optim, name = config.section(self.section()), config.optim, self.section()
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

    # ------------------------------------------------------------ bank
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
        self.heads = heads
        return heads.project(backbone(images)).float()

    def assign(self, features: np.ndarray, seed: int) -> Assignment:
        """Labels from extracted projections: the bank is (re)filled with them, then clustered (and kept only when
        later updates read it)."""
        bank = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.bank = bank.unsqueeze(0).repeat(self.v2.n_large, 1, 1)
        assignment = self._assign_sets(seed)
        if self.v2.labels_from != "bank":
            self.bank = None
        return assignment

    def assign_stored(self, seed: int, heads: nn.Module | None, last: bool = False) -> Assignment | None:
        source = self.v2.final_labels if last else self.v2.labels_from
        if self.bank is None or source == "pass" or not isinstance(heads, PrototypeHead):
            return None
        self.heads = heads
        return self._assign_sets(seed)

    def _assign_sets(self, seed: int) -> Assignment:
        assert self.bank is not None
        n_large, k = self.bank.shape[0], self.config.cluster.k
        results = [self.assign_bank(self.bank[s % n_large].numpy(), s, seed) for s in range(self.v2.n_sets)]
        labels = np.stack([labels for labels, _, _ in results], axis=1)
        sizes = np.stack([np.bincount(labels[:, s], minlength=k) for s in range(labels.shape[1])])
        stats: dict[str, Any] = {"n_empty": int(sum(r[2].get("n_empty", 0) for r in results))}
        stats["n_empty_sets"] = [int(r[2].get("n_empty", 0)) for r in results]
        stats.update(smallest=int(sizes.min()), largest=int(sizes.max()))
        state: dict[str, Any] = {"centroids": np.stack([c for _, c, _ in results])}
        if "log_beta" in results[0][2]:  # labels by transport: its column scaling labels new images too
            state["log_beta"] = np.stack([r[2].pop("log_beta") for r in results])
            state["epsilon"] = float(self.config.section(self.section()).epsilon)
        for key in results[0][2]:
            if key != "n_empty":
                stats[key] = float(np.mean([r[2][key] for r in results]))
        return Assignment(labels=labels, n_classes=k, stats=stats, state=state)

    def predict(self, values: np.ndarray, state: dict[str, Any]) -> Prediction:
        """Each set's nearest prototype by cosine (DeepCluster-v2's centroids), or, where the labels came from a
        transport (SeLa-v2), its rule on the scores / epsilon with the set's column scaling."""
        z = values.astype(np.float64)
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        centroids, columns = state["centroids"], []
        for s in range(len(centroids)):
            if "log_beta" in state:
                scores = z @ centroids[s].astype(np.float64).T / float(state["epsilon"])
                log_probs = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
                columns.append(transport(log_probs, 1.0, state["log_beta"][s]))
            else:
                columns.append(most_similar(z, centroids[s]))
        return stack(columns, "probability" if "log_beta" in state else "similarity")

    @abstractmethod
    def assign_bank(self, bank: np.ndarray, index: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Set `index`'s labels [N], prototypes [k, d] and statistics from the bank's projections [N, d]."""

    def update_heads(self, heads: nn.Module, assignment: Assignment) -> None:
        """The prototypes become the sets' centroids."""
        if isinstance(heads, PrototypeHead) and "centroids" in assignment.state:
            heads.set_prototypes(torch.from_numpy(assignment.state["centroids"]))

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank = state.get("bank")


def v2_loss(scores: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """scores [n_crops, B, n_sets, k] cosine similarities, targets [B, n_sets] -> the mean cross-entropy."""
    n_crops, batch, n_sets, k = scores.shape
    if targets.shape != (batch, n_sets):
        raise ValueError(f"v2_loss: targets {tuple(targets.shape)} do not match scores {tuple(scores.shape)}")
    logits = scores.float().div(temperature).reshape(-1, k)
    expanded = targets.long().unsqueeze(0).expand(n_crops, batch, n_sets).reshape(-1)
    return nn.functional.cross_entropy(logits, expanded)
