"""SeLa (Asano, Rupprecht and Vedaldi, ICLR 2020): self-labelling by optimal transport with equal-size clusters.

Several heads, each Linear(features, k) with its own labels; the labels of a head are the Sinkhorn-Knopp solution
for its softmax outputs over the whole data set; the loss is the mean of the heads' cross-entropies. The heads are
kept across label updates, which are spread over the run (quadratically: dense early) rather than once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcluster.cluster.sinkhorn import (
    balanced_random_labels,
    default_chunk_rows,
    resident_budget_mb,
    sinkhorn_labels,
)
from deepcluster.config import SMALL_INPUT_LIMIT, option
from deepcluster.config.options import number, one_of, positive, positive_or_none
from deepcluster.data.samplers import shuffled_sample
from deepcluster.data.views import ClusterView
from deepcluster.methods.base import Assignment, ExtractingMethod, ImageView, View, cluster_sizes
from deepcluster.methods.predict import Prediction, transport
from deepcluster.models import MultiHead
from deepcluster.seeding import derive_seed

SMALL_IMAGE_LAMBDA = 10.0
LAMBDA = 25.0
SPACINGS = ("quadratic", "linear")
VIEWS = ("cluster", "train")


def default_lambda(input_size: int | None) -> float:
    """The paper's lambda: 25, or 10 for small images (at most 96 px)."""
    return SMALL_IMAGE_LAMBDA if input_size is not None and input_size <= SMALL_INPUT_LIMIT else LAMBDA


def update_steps(total_steps: int, updates: int, spacing: str) -> list[int]:
    """Global steps of `updates` label updates over `total_steps`: step (u / n)^2 * total (quadratic) or
    u / n * total (linear) for u = 1..n, each at least 1 and without repeats; the last is `total_steps` (labels of
    the trained network)."""
    if updates < 1 or total_steps < 1:
        raise ValueError(
            f"update_steps: need updates >= 1 and total_steps >= 1, got {updates}, {total_steps}"
        )
    fractions = np.arange(1, updates + 1) / updates
    if spacing == "quadratic":
        fractions = fractions**2
    elif spacing != "linear":
        raise ValueError(f"update_steps: spacing={spacing!r}; choose quadratic or linear")
    steps = np.maximum(1, np.rint(fractions * total_steps).astype(np.int64))
    return sorted({int(s) for s in steps})


@dataclass
class SelaConfig:
    """SeLa (Asano et al., 2020): labels from optimal transport with equal-size clusters, several heads."""

    heads: int = option(
        10,
        "classification heads, each Linear(features, k) with its own labels; the loss is their mean",
        check=positive,
    )
    lam: float | None = option(
        None,
        "sharpness lambda of P^lambda (default: 25, or 10 for inputs of at most 96 px, the paper's small-image "
        "value)",
        check=number(0, optional=True),
    )
    updates: int | None = option(
        None,
        "label updates over the run (after the random start; the last one at the very end); default: 2 per epoch",
        check=positive_or_none,
    )
    spacing: str = option(
        "quadratic",
        "quadratic (dense early, as in the paper) or linear spacing of the updates",
        check=one_of(*SPACINGS),
    )
    tolerance: float = option(
        0.1,
        "stop Sinkhorn when the column scaling changes by less than this (sum of |old/new - 1|)",
        check=number(0),
    )
    check_every: int = option(10, "Sinkhorn iterations between two convergence checks", check=positive)
    max_iters: int = option(1000, "most Sinkhorn iterations", check=positive)
    chunk_mb: float = option(
        64.0,
        "rows of P are processed in float64 chunks of about this size; bounds Sinkhorn's working memory",
        check=number(0),
    )
    view: str = option(
        "cluster",
        "which view P is computed on: cluster (centre crop) or train (the augmented crops)",
        check=one_of(*VIEWS),
    )


class SeLa(ExtractingMethod):
    """Features: each head's log-softmax over k; labels: Sinkhorn-Knopp per head; heads: kept across updates."""

    name = "sela"
    summary = "Sinkhorn-Knopp labels of equal-size clusters, several kept heads (Asano et al., 2020)"
    Config = SelaConfig

    @property
    def lam(self) -> float:
        """Lambda in force: the option, or the paper's default for the input size."""
        sela = self.config.sela
        return float(sela.lam) if sela.lam is not None else default_lambda(self.config.data.input_size)

    def label_update_steps(self, steps_per_epoch: int, epochs: int) -> list[int]:
        sela = self.config.sela
        updates = sela.updates or 2 * epochs
        return [0, *update_steps(steps_per_epoch * epochs, updates, sela.spacing)]

    def initial_assignment(self, indices: np.ndarray, name_of: Callable[[int], str], seed: int) -> Assignment:
        k, heads = self.config.cluster.k, self.config.sela.heads
        labels = np.stack(
            [balanced_random_labels(len(indices), k, derive_seed(seed, "head", h)) for h in range(heads)],
            axis=1,
        )
        return Assignment(labels=labels, n_classes=k)

    def sample(self, labels: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
        return shuffled_sample(labels.shape[0], n_samples, seed=seed)

    def keep_heads(self, heads: nn.Module, assignment: Assignment) -> bool:
        """The heads are kept across label updates."""
        return True

    def extract_view(
        self, cluster_view: ClusterView, train_view: View, generator: torch.Generator
    ) -> ImageView:
        """`sela.view`: the cluster view, or the train view's augmented crops (drawn from `generator`)."""
        if self.config.sela.view == "train":
            return lambda batch: train_view(batch, generator)
        return cluster_view

    def extract(self, backbone: nn.Module, heads: nn.Module | None, images: torch.Tensor) -> torch.Tensor:
        if heads is None:
            raise RuntimeError(
                "SeLa extracts its heads' outputs: the heads must exist before the first update"
            )
        return torch.log_softmax(heads(backbone(images)).float(), dim=-1).flatten(1)

    def assign(self, values: np.ndarray, heads: nn.Module | None, seed: int) -> Assignment:
        sela, k = self.config.sela, self.config.cluster.k
        n_heads = values.shape[1] // k
        if values.shape[1] != n_heads * k:
            raise ValueError(f"SeLa.assign: {values.shape[1]} values per image is not a multiple of k={k}")
        per_head = values.reshape(values.shape[0], n_heads, k)
        device = self.device
        chunk_rows = default_chunk_rows(k, sela.chunk_mb)
        results = [
            sinkhorn_labels(
                per_head[:, h, :],
                self.lam,
                tolerance=sela.tolerance,
                check_every=sela.check_every,
                max_iters=sela.max_iters,
                chunk_rows=chunk_rows,
                device=device,
                seed=derive_seed(seed, "head", h),
                resident_mb=resident_budget_mb(device),
            )
            for h in range(n_heads)
        ]
        labels = np.stack([r.labels for r in results], axis=1)
        return Assignment(
            labels=labels,
            n_classes=k,
            state={"log_beta": np.stack([r.log_beta for r in results]), "lam": self.lam},
            stats={
                "sinkhorn_loss": float(np.mean([r.cross_entropy for r in results])),
                "sinkhorn_iters": float(np.mean([r.iterations for r in results])),
                "sinkhorn_unconverged": int(sum(not r.converged for r in results)),
                **cluster_sizes(labels, k),
            },
        )

    def predict(self, values: np.ndarray, state: dict[str, Any]) -> Prediction:
        """Each head's Sinkhorn rule with the assignment's column scaling: argmax of lam * log p + log beta (the
        labels the equal-size transport gives, for any number of images); the score is the plan's probability."""
        log_beta = state["log_beta"]
        per_head = values.reshape(len(values), len(log_beta), -1)
        columns = [transport(per_head[:, h], float(state["lam"]), log_beta[h]) for h in range(len(log_beta))]
        return Prediction.from_columns(columns, "probability")

    def build_heads(self, feature_dim: int, assignment: Assignment, generator: torch.Generator) -> nn.Module:
        return multi_head_for(feature_dim, assignment, generator)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return multi_head_loss(outputs, targets)


def multi_head_for(feature_dim: int, assignment: Assignment, generator: torch.Generator) -> MultiHead:
    """One linear head of `n_classes` outputs per label column of the assignment ([N] labels: one head)."""
    n_heads = assignment.labels.shape[1] if assignment.labels.ndim == 2 else 1
    return MultiHead(feature_dim, assignment.n_classes, n_heads, generator=generator)


def multi_head_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over heads of each head's cross-entropy: outputs [B, H, K] logits, targets [B, H] class ids."""
    if outputs.ndim != 3 or targets.shape != outputs.shape[:2]:
        raise ValueError(
            f"multi_head_loss: outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} do not match "
            "([B, H, K] and [B, H])"
        )
    return nn.functional.cross_entropy(outputs.float().flatten(0, 1), targets.flatten())
