"""deepcluster: unsupervised visual features by alternating clustering and classification.

>>> import deepcluster
>>> config = deepcluster.preset_config("default")
>>> config.run.epochs = 2
>>> result = deepcluster.train(config)      # doctest: +SKIP

The functions are imported on first use, so that `import deepcluster.config` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deepcluster.config import ConfigError, TrainConfig, apply_overrides, dump_config

if TYPE_CHECKING:
    from deepcluster.engine.loop import RunResult

__version__ = "0.1.0"


def preset_config(name: str = "default", method: str | None = None) -> TrainConfig:
    """A named preset (`default` or `paper`) for `method`, with every registered method's section; see
    `deepcluster.api.preset_config`."""
    from deepcluster import api

    return api.preset_config(name, method)


def config_from_dict(raw: Any, origin: str = "config") -> TrainConfig:
    """A config from nested settings; see `deepcluster.api.config_from_dict`."""
    from deepcluster import api

    return api.config_from_dict(raw, origin=origin)


def load_config(path: Any) -> TrainConfig:
    """A YAML settings file (a run's config.yaml reproduces the run); see `deepcluster.api.load_config`."""
    from deepcluster import api

    return api.load_config(path)


def train(config: TrainConfig, **kwargs: Any) -> RunResult:
    """Train `config` end to end, then build its report; see `deepcluster.api.train`."""
    from deepcluster import api

    return api.train(config, **kwargs)


def resume(run_dir: str, epochs: int | None = None, **run_overrides: Any) -> RunResult:
    """Continue a stopped run; see `deepcluster.api.resume`."""
    from deepcluster import api

    return api.resume(run_dir, epochs=epochs, **run_overrides)


def load(run_dir: Any, device: str = "auto", trust_checkpoint: bool = False) -> Any:
    """A trained run: its network in eval mode and `embed(images)`, `assign(images)`; see
    `deepcluster.use.run.load`."""
    from deepcluster import api

    return api.load(run_dir, device=device, trust_checkpoint=trust_checkpoint)


__all__ = [
    "ConfigError",
    "TrainConfig",
    "__version__",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "load",
    "load_config",
    "preset_config",
    "resume",
    "train",
]
