"""Methods of the family, by name."""

from __future__ import annotations

from deepcluster.config import TrainConfig
from deepcluster.methods.base import Assignment, Method
from deepcluster.methods.deepcluster import DeepCluster

METHODS: dict[str, type[Method]] = {DeepCluster.name: DeepCluster}


def build_method(config: TrainConfig) -> Method:
    """The method named by `config.method`."""
    try:
        return METHODS[config.method](config)
    except KeyError:
        raise ValueError(f"--method {config.method}: unknown; choose from {', '.join(METHODS)}") from None


__all__ = ["METHODS", "Assignment", "DeepCluster", "Method", "build_method"]
