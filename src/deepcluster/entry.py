"""The `deepcluster` command (and `python -m deepcluster`, which torchrun starts).

A job scheduler's stop signal (SIGTERM, SLURM's SIGUSR1) can come while Python is still loading PyTorch and the
package, seconds before a run listens for it: then nothing has started and nothing needs saving, so the process
leaves with the pre-emption exit code (75: run the same command again) instead of dying of the signal. A `train`
command keeps that until the run itself listens for `run.stop_signals`; the other commands go back to the
default handlers once loaded."""

from __future__ import annotations

import signal
import sys
from types import FrameType

from deepcluster.config.run import PREEMPTED_EXIT

EARLY_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _stopped_while_starting(number: int, _frame: FrameType | None) -> None:
    print(
        f"deepcluster: stopped by {signal.Signals(number).name} while starting, before anything was written: "
        "run the same command again",
        file=sys.stderr,
    )
    raise SystemExit(PREEMPTED_EXIT)


def main() -> int:
    for number in EARLY_SIGNALS:
        signal.signal(number, _stopped_while_starting)
    from deepcluster.cli import main as run_command

    if sys.argv[1:2] != ["train"]:
        for number in EARLY_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
    return run_command()
