"""Methods of the family, by name."""

from __future__ import annotations

from deepcluster.config import TrainConfig
from deepcluster.methods.base import Assignment, Method, primary_labels
from deepcluster.methods.deepcluster import DeepCluster
from deepcluster.methods.deepercluster import DeeperCluster
from deepcluster.methods.sela import SeLa
from deepcluster.methods.transfer import Transfer

METHODS: dict[str, type[Method]] = {
    method.name: method for method in (DeepCluster, DeeperCluster, SeLa, Transfer)
}


def build_method(config: TrainConfig) -> Method:
    """The method named by `config.method`."""
    try:
        return METHODS[config.method](config)
    except KeyError:
        raise ValueError(f"--method {config.method}: unknown; choose from {', '.join(METHODS)}") from None


__all__ = [
    "METHODS",
    "Assignment",
    "DeepCluster",
    "DeeperCluster",
    "Method",
    "SeLa",
    "Transfer",
    "build_method",
    "primary_labels",
]
