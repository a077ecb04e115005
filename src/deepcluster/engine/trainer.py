"""Training a configuration from scratch, or resuming a run from its directory (the engine's public entry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepcluster.config import ConfigError, TrainConfig
from deepcluster.engine.loop import RunResult, StepCallback, Trainer
from deepcluster.engine.state import TrainingDiverged
from deepcluster.methods import METHODS
from deepcluster.storage import RunDir

__all__ = ["RunResult", "StepCallback", "Trainer", "TrainingDiverged", "resume", "resume_config", "train"]


def train(config: TrainConfig, on_step: StepCallback | None = None) -> RunResult:
    """Train `config` from scratch into `config.run.out`."""
    return Trainer(config, resume=False, on_step=on_step).fit()


def resume_config(run_dir: str | Path, epochs: int | None = None, **run_overrides: Any) -> TrainConfig:
    """The settings of the run saved in `run_dir`, with the few a resume may change (`--epochs` and the `run`
    options marked resumable, e.g. device, threads, progress)."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise ConfigError(
            f"--resume {run_dir}: no such run directory (a run stopped before it began leaves none: start it "
            "again with its train command)"
        )
    if not run.config.is_file():
        raise ConfigError(
            f"--resume {run_dir}: no config.yaml there; is it a run directory? (A run killed within "
            "milliseconds of making it has none yet: start it again with its train command.)"
        )
    config = METHODS.load(run.config)
    config.run.out = str(run_dir)
    if epochs is not None:
        config.run.epochs = epochs
    for key, value in run_overrides.items():
        if not hasattr(config.run, key):
            raise ConfigError(f"--resume: option run.{key} cannot be changed when resuming")
        setattr(config.run, key, value)
    return config


def resume(
    run_dir: str | Path,
    epochs: int | None = None,
    on_step: StepCallback | None = None,
    trust_checkpoint: bool = False,
    **run_overrides: Any,
) -> RunResult:
    """Continue the run saved in `run_dir` (optionally for more epochs) to the same result as an unbroken run.
    `trust_checkpoint`: load a checkpoint that needs a full unpickle (an older format; it can run code)."""
    config = resume_config(run_dir, epochs, **run_overrides)
    return Trainer(config, resume=True, on_step=on_step, trust_checkpoint=trust_checkpoint).fit()
