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
from deepcluster.config import ConfigError, RunConfig, TrainConfig, resumable_options, setting_differences
from deepcluster.engine.loop import RunResult, StepCallback, Trainer
from deepcluster.engine.stop import Preempted, stopping
from deepcluster.methods import METHODS
from deepcluster.storage import RunDir, open_run_dir, read_header

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
    """Train `config` from scratch into `config.run.out`, then build its report (`run.report`). With
    `run.auto_resume`, a run of the same settings already in `run.out` is continued instead (`--resume`), or,
    when it has finished, left as it is."""
    if config.run.auto_resume and config.run.out is not None:
        continued = _continue(config, on_step)
        if continued is not None:
            return continued
    return _with_report(Trainer(config, on_step=on_step).fit())


def _continue(config: TrainConfig, on_step: StepCallback | None) -> RunResult | None:
    """`--auto-resume`: the run in `config.run.out` continued (or, finished, read back), None when there is none
    to continue (no checkpoint yet: start it); ConfigError naming the settings that differ from its own."""
    run = RunDir(str(config.run.out))
    if not run.has_checkpoint():
        return None
    if not run.request.is_file():
        raise ConfigError(
            f"--auto-resume: {run.root} holds a run without request.yaml (made by an older version), so its "
            f"settings cannot be compared with these; resume it with --resume {run.root} or choose another --out"
        )
    asked, before = METHODS.complete(config), load_config(run.request)
    differences = setting_differences(before, asked)
    if differences:
        raise ConfigError(
            f"--auto-resume: {run.root} holds a run of other settings ({'; '.join(differences)}); resume it "
            "with its own command, or choose another --out"
        )
    changed = {  # what a resume may change, where this command asks for something else than the run's did
        name: getattr(asked.run, name)
        for name in resumable_options(RunConfig)
        if name != "out" and getattr(asked.run, name) != getattr(before.run, name)
    }
    reached = int((read_header(run.checkpoint) or {}).get("epoch", -1))
    if "epochs" not in changed and run.labels_csv.is_file() and reached >= load_config(run.config).run.epochs:
        log.warning("%s: the run there has finished already (--auto-resume): nothing to do", run.root)
        built = (run.root / "report" / "index.html").is_file()
        return finished_run(run) if built else _with_report(finished_run(run))  # stopped while it was built
    log.info("%s: continuing the run there (--auto-resume)", run.root)
    return resume(run.root, on_step=on_step, **changed)


def finished_run(run: RunDir) -> RunResult:
    """What a finished run left: its labels.csv, history, settings and trained backbone."""
    from deepcluster.models.loading import load_model

    table = run.read_labels()
    config = load_config(run.config)
    backbone = load_model(run.root).backbone
    return RunResult(run.root, table.labels[:, 0], table.indices, run.read_history(), backbone, config)


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
    run_dir = result.run_dir
    rebuild = (
        "while its report was built; the run is complete: the same command with --auto-resume builds the "
    )
    rebuild += f"report (or deepcluster report {run_dir})"
    try:
        with stopping(result.config.run.stop_signals, rebuild):
            page = build_report(run_dir, trust_checkpoint=trust_checkpoint)
    except Preempted:
        raise
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
