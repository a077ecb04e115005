"""The small interface between the training engine and a method of the family.

A method makes three choices: what is extracted from each image for labelling, how labels are assigned, and
which heads and loss train the network. Everything else (data, loop, checkpoints, logs) is the engine's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from deepcluster.config import TrainConfig


@dataclass
class Assignment:
    """Pseudo-labels for every image and what the assigner measured on the way."""

    labels: np.ndarray
    """int64 [N], ids in 0..n_classes-1, every id used at least once."""
    n_classes: int
    stats: dict[str, float] = field(default_factory=dict)
    """Logged per epoch, e.g. kmeans_loss, n_empty."""
    state: dict[str, Any] = field(default_factory=dict)
    """Arrays worth keeping with the run (e.g. centroids)."""


class Method(ABC):
    """One method of the DeepCluster family."""

    name: ClassVar[str]

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @abstractmethod
    def extract(self, backbone: nn.Module, heads: nn.Module | None, images: torch.Tensor) -> torch.Tensor:
        """Per-batch values the assigner needs (eval mode, cluster view), [B, D]."""

    @abstractmethod
    def assign(self, features: np.ndarray, seed: int) -> Assignment:
        """Pseudo-labels for all images from their extracted values."""

    @abstractmethod
    def build_heads(self, feature_dim: int, assignment: Assignment, generator: torch.Generator) -> nn.Module:
        """Freshly initialised head(s) predicting the assignment's labels from the backbone's embedding."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch (cross-entropy by default)."""
        return nn.functional.cross_entropy(outputs.float(), targets)
