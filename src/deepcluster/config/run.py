"""The `run` section: everything about a run that is not the method (epochs, seed, device, precision, budget,
checkpoints, outputs)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from deepcluster.config.options import number, one_of, option, positive, positive_or_none, whole

PRECISIONS = ("auto", "fp32", "bf16")
CONV_KERNELS = ("onednn", "nnpack")
SEED_MAX = 2**63 - 1
"""The largest run seed (torch's and the derived seeds' 63 bits)."""
PREEMPTED_EXIT = 75
"""The exit code of a run stopped by a stop signal (EX_TEMPFAIL: run the same command again): after writing the
checkpoint of its step, or while it was still starting, with nothing yet to save."""
"""The largest run seed (torch's and the derived seeds' 63 bits)."""


def _seed(value: Any) -> str | None:
    return (
        None
        if whole(0)(value) is None and value <= SEED_MAX
        else "must be a whole number from 0 to 2**63 - 1"
    )


def _off_or_two(value: Any) -> str | None:
    return None if value == 0 or whole(2)(value) is None else "must be 0 (off) or a whole number >= 2"


def _signal_names(value: Any) -> str | None:
    names = [name.strip().upper() for name in str(value).split(",") if name.strip()]
    unknown = [name for name in names if f"SIG{name}" not in signal.Signals.__members__]
    return f"unknown signal(s) {', '.join(unknown)}; e.g. TERM,USR1 (or empty: none)" if unknown else None


def _device_name(value: Any) -> str | None:
    ok = isinstance(value, str) and (value in ("auto", "cpu", "cuda") or value.startswith("cuda:"))
    return None if ok else "choose cpu, cuda, cuda:N or auto"


def cpu_conv_names(value: str) -> list[str]:
    """The kernel names of a `run.cpu_conv` value: one, or a comma-separated list (one per convolution)."""
    return [name.strip() for name in value.split(",")]


def _cpu_conv(value: Any) -> str | None:
    ok = value == "measure" or all(name in CONV_KERNELS for name in cpu_conv_names(str(value)))
    return None if ok else "choose onednn, nnpack, measure, or a comma-separated list of onednn and nnpack"


@dataclass
class RunConfig:
    """Everything about the run that is not the method."""

    epochs: int = option(4, "number of epochs", flag="--epochs", check=positive, resumable=True)
    seed: int = option(0, "random seed", flag="--seed", check=_seed)
    device: str = option(
        "auto",
        "cpu, cuda, cuda:N or auto (cuda when available)",
        flag="--device",
        check=_device_name,
        resumable=True,
    )
    precision: str = option(
        "auto",
        "fp32, bf16 or auto (bf16 on CPUs with native bf16 and on CUDA GPUs that have it)",
        flag="--precision",
        check=one_of(*PRECISIONS),
    )
    cpu_conv: str = option(
        "onednn",
        "forward kernel of the backbone's convolutions on the CPU in fp32: onednn, nnpack (stride-1 layers "
        "in batches of 16 or more; im2col + GEMM for the others), one of them per convolution (comma-separated), "
        "or measure: time both on each layer at set-up and keep the faster (config.yaml records the list)",
        flag="--cpu-conv",
        check=_cpu_conv,
    )
    out: str | None = option(None, "run directory (default runs/<method>-<date>-<time>)", flag="--out")
    checkpoint_every: int = option(
        100,
        "steps between mid-epoch checkpoints (0: only at the end of each epoch)",
        flag="--checkpoint-every",
        check=whole(0),
    )
    save_features: bool = option(
        False, "write the last clustering features to features.npy", flag="--save-features"
    )
    progress: bool = option(
        True,
        "progress bars (on a terminal only: a redirected log gets none)",
        flag="--no-progress",
        resumable=True,
    )
    knn_monitor: int = option(
        2000,
        "each epoch, weighted k-NN (k 20, leave-one-out) of the true classes on the method's embedding of this "
        "many images (a fixed sample), logged as knn_true; for evaluation only, when the data has labels (0: off)",
        check=_off_or_two,
    )
    max_minutes: float | None = option(
        None,
        "time budget of the training, in minutes: the run times its first label update and steps, then plans "
        "its epochs and epoch size so that the schedule (warm-up, cosine, the last labels) ends within it "
        "(run.budget_plan records the plan); unset: run.epochs as given",
        flag="--max-minutes",
        check=number(0, optional=True),
    )
    budget_plan: str | None = option(
        None,
        "the plan run.max_minutes made (written by the run with run.epochs and optim.epoch_size; a run whose "
        "settings have one keeps it instead of timing again)",
    )
    stop_signals: str = option(
        "TERM,USR1",
        "signals that stop the run at the next step with a checkpoint of that step (a cluster's pre-emption: "
        "SIGTERM, SLURM's --signal=USR1@120), exit code 75; comma-separated, empty: none",
        check=_signal_names,
        resumable=True,
    )
    auto_resume: bool = option(
        False,
        "when --out holds a run of the same settings, continue it (as --resume would; one that finished exits "
        "saying so), else start it: a requeued job's unchanged command goes on",
        flag="--auto-resume",
        resumable=True,
    )
    threads: int | None = option(
        None,
        "CPU threads for torch and faiss (default: theirs)",
        flag="--threads",
        check=positive_or_none,
        resumable=True,
    )
    report: bool = option(True, "build the run's HTML report (RUN/report/index.html) when training ends")
    dist_timeout_minutes: float = option(
        180.0,
        "under torchrun: how long a process waits for the others in one collective (the first process "
        "decodes and clusters while the others wait)",
        check=number(0),
    )
