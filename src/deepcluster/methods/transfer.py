"""Label transfer: train any architecture on the labels another run produced (as SeLa's paper moves labels from one
network to another). The labels are fixed: one assignment at the start, heads kept, one head per label column."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from deepcluster.config import ConfigError, TrainConfig, option
from deepcluster.methods.base import Assignment, Method
from deepcluster.methods.sela import multi_head_for, multi_head_loss
from deepcluster.storage import read_labels_csv


@dataclass
class TransferConfig:
    """Label transfer: train any architecture on the labels a run wrote."""

    labels: str | None = option(
        None,
        "train on the labels a run wrote (RUN_DIR/labels.csv; every cluster* column is one head's labels), with "
        "any --arch: label transfer",
        flag="--labels",
        metavar="LABELS_CSV",
        selects_method="transfer",
    )

    def check(self, config: TrainConfig) -> None:
        if config.method == Transfer.name and not self.labels:
            raise ConfigError("--method transfer needs --labels RUN_DIR/labels.csv (transfer.labels)")
        if config.method != Transfer.name and self.labels:
            raise ConfigError(
                f"--labels trains on given labels and cannot be combined with --method {config.method}; drop one"
            )


class Transfer(Method):
    """Labels: read from `transfer.labels` (a labels.csv); heads: one linear head per label column."""

    name = "transfer"
    summary = "train on the labels of a finished run (--labels RUN/labels.csv)"
    Config = TransferConfig

    def __init__(self, config: TrainConfig, device: torch.device | None = None) -> None:
        super().__init__(config, device)
        assert config.transfer.labels is not None
        self.table = read_labels_csv(config.transfer.labels)

    @classmethod
    def fit_to_data(cls, config: TrainConfig, n_images: int, feature_dim: int | None) -> TrainConfig:
        """The classes are the given labels' (`cluster.k` plays no part); before the data, the labels file is
        read once to refuse a bad one before any decoding."""
        if feature_dim is None:
            read_labels_csv(str(config.transfer.labels))
        return config

    def label_update_steps(self, steps_per_epoch: int, epochs: int) -> list[int]:
        return [0]

    def keep_heads(self, heads: nn.Module, assignment: Assignment) -> bool:
        return True

    def initial_assignment(self, indices: np.ndarray, name_of: Callable[[int], str], seed: int) -> Assignment:
        """The labels of the images in `indices` (source indices of the readable images), checked by name."""
        path = self.config.transfer.labels
        row_of = {int(index): row for row, index in enumerate(self.table.indices)}
        rows = np.empty(len(indices), dtype=np.int64)
        for position, index in enumerate(indices):
            row = row_of.get(int(index))
            if row is None:
                raise ConfigError(
                    f"--labels {path}: has no label for image {name_of(int(index))!r} (index {int(index)}); train "
                    "on the same --data as the run that wrote it"
                )
            if self.table.names[row] != name_of(int(index)):
                raise ConfigError(
                    f"--labels {path}: row for index {int(index)} names {self.table.names[row]!r} but --data has "
                    f"{name_of(int(index))!r} there; train on the same --data as the run that wrote it"
                )
            rows[position] = row
        labels = self.table.labels[rows]
        n_classes = int(self.table.labels.max()) + 1
        return Assignment(labels=labels if labels.shape[1] > 1 else labels[:, 0], n_classes=n_classes)

    def build_heads(self, feature_dim: int, assignment: Assignment, generator: torch.Generator) -> nn.Module:
        return multi_head_for(feature_dim, assignment, generator)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return multi_head_loss(outputs, targets.reshape(outputs.shape[:2]))
