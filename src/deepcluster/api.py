"""The public Python API: configurations with every registered method's section, training, resuming; the run's
report is built after the loop (the engine never builds it)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepcluster import config as settings
from deepcluster.config import ConfigError, TrainConfig
from deepcluster.engine.loop import RunResult, StepCallback, Trainer
from deepcluster.methods import METHODS
from deepcluster.storage import open_run_dir

log = logging.getLogger("deepcluster")


def preset_config(name: str = "default", method: str | None = None) -> TrainConfig:
    """A named preset (`default` or `paper`) for `method` (default: the default method), with every registered
    method's settings section; the method's own starting settings apply under the preset's."""
    return settings.preset_config(name, method, METHODS)


def config_from_dict(raw: Mapping[str, Any], origin: str = "config") -> TrainConfig:
    """A config from nested settings ({"preset": ..., "optim": {"lr": 0.1}, ...}), with every registered
    method's section."""
    return settings.config_from_dict(raw, METHODS, origin=origin)


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """A YAML settings file (a run's config.yaml reproduces the run), with every registered method's section."""
    return settings.load_config(path, METHODS)


def train(config: TrainConfig, on_step: StepCallback | None = None) -> RunResult:
    """Train `config` from scratch into `config.run.out`, then build its report (`run.report`)."""
    return _with_report(Trainer(config, on_step=on_step).fit())


def resume_config(run_dir: str | Path, epochs: int | None = None, **run_overrides: Any) -> TrainConfig:
    """The settings of the run saved in `run_dir`, with the few a resume may change (`--epochs` and the `run`
    options marked resumable, e.g. device, threads, progress)."""
    config = load_config(open_run_dir(run_dir, "--resume").config)
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
    """Continue a stopped run to the same result as an unbroken one, then build its report (`run.report`).
    `trust_checkpoint` loads a checkpoint of an older format, whose full unpickle can run code."""
    config = resume_config(run_dir, epochs, **run_overrides)
    result = Trainer(config, resume=True, on_step=on_step, trust_checkpoint=trust_checkpoint).fit()
    return _with_report(result, trust_checkpoint)


def _with_report(result: RunResult, trust_checkpoint: bool = False) -> RunResult:
    """Build the run's HTML report when its config asks for it, on the main process; a failure is logged with
    the command that rebuilds it, never fatal (the run itself is complete)."""
    if int(os.environ.get("RANK", "0")) != 0 or result.config is None or not result.config.run.report:
        return result
    from deepcluster.report.build import build_report

    started = time.perf_counter()
    try:
        page = build_report(result.run_dir, trust_checkpoint=trust_checkpoint)
    except Exception as error:  # keep the run, say how to retry
        log.warning(
            "the report could not be built (%s: %s); rebuild it with: deepcluster report %s",
            type(error).__name__,
            error,
            result.run_dir,
        )
        return result
    log.info("report: %s (%.0f s)", page, time.perf_counter() - started)
    return result


def load(run_dir: str | Path, device: str = "auto", trust_checkpoint: bool = False) -> Any:
    """A trained run (`deepcluster.use.run.TrainedRun`): its network, `embed`, `assign`; see `use.run.load`."""
    from deepcluster.use.run import load as _load

    return _load(run_dir, device=device, trust_checkpoint=trust_checkpoint)
