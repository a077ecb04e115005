"""Methods of the family, by name: one file each, one line each in the registry below."""

from __future__ import annotations

import torch

from deepcluster.config import TrainConfig
from deepcluster.methods.base import Assignment, ExtractingMethod, Method, ProcessGroup, primary_labels
from deepcluster.methods.deepcluster import DeepCluster
from deepcluster.methods.deepcluster_v2 import DeepClusterV2
from deepcluster.methods.deepercluster import DeeperCluster
from deepcluster.methods.registry import MethodRegistry
from deepcluster.methods.sela import SeLa
from deepcluster.methods.sela_v2 import SeLaV2
from deepcluster.methods.transfer import Transfer

METHODS = MethodRegistry([DeepCluster, DeeperCluster, SeLa, Transfer, DeepClusterV2, SeLaV2])
"""The registered methods; `--method NAME` picks one."""


def build_method(config: TrainConfig, device: torch.device | None = None) -> Method:
    """The registered method named by `config.method` (see `MethodRegistry.build`)."""
    return METHODS.build(config, device)


__all__ = [
    "METHODS",
    "Assignment",
    "DeepCluster",
    "DeepClusterV2",
    "DeeperCluster",
    "ExtractingMethod",
    "Method",
    "MethodRegistry",
    "ProcessGroup",
    "SeLa",
    "SeLaV2",
    "Transfer",
    "build_method",
    "primary_labels",
]
