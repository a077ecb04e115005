"""deepcluster: unsupervised visual features by alternating clustering and classification.

>>> import deepcluster
>>> config = deepcluster.preset_config("default")
>>> config.run.epochs = 2
>>> result = deepcluster.train(config)      # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deepcluster.config import ConfigError, TrainConfig, load_config, preset_config

if TYPE_CHECKING:
    from deepcluster.engine.trainer import RunResult

__version__ = "0.1.0"


def train(config: TrainConfig) -> RunResult:
    """Train `config` end to end; see `deepcluster.engine.trainer.train`."""
    from deepcluster.engine.trainer import train as _train

    return _train(config)


def resume(run_dir: str, epochs: int | None = None, **run_overrides: Any) -> RunResult:
    """Continue a stopped run; see `deepcluster.engine.trainer.resume`."""
    from deepcluster.engine.trainer import resume as _resume

    return _resume(run_dir, epochs=epochs, **run_overrides)


__all__ = ["ConfigError", "TrainConfig", "__version__", "load_config", "preset_config", "resume", "train"]
