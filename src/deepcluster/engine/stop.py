"""Pre-emption: the signals a cluster sends before it stops a job (SIGTERM; SLURM's `--signal=USR1@120`) ask
the run to stop at the next step boundary, where every process agrees on the step, writes a checkpoint at that
step and leaves with `PREEMPTED_EXIT` (the same command with `--auto-resume` then continues exactly there)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

PREEMPTED_EXIT = 75
"""The exit code of a run stopped by a signal after writing its checkpoint (EX_TEMPFAIL: run it again)."""


class Preempted(Exception):
    """The run stopped on a signal, its checkpoint written at the step it reached."""

    def __init__(self, signal_name: str, epoch: int, step: int, run_dir: str) -> None:
        super().__init__(
            f"stopped by {signal_name} at epoch {epoch}, step {step}; the checkpoint of that step is in {run_dir}: "
            f"run the same command with --auto-resume (or deepcluster train --resume {run_dir}) to continue"
        )
        self.signal_name = signal_name


def signal_numbers(names: str) -> list[signal.Signals]:
    """The signals of a `run.stop_signals` value ("TERM,USR1"; "" for none)."""
    return [signal.Signals[f"SIG{name.strip().upper()}"] for name in names.split(",") if name.strip()]


class StopRequests:
    """Which stop signal, if any, this process has received since `listening` began."""

    def __init__(self) -> None:
        self.received: str | None = None

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, number: int, _frame: FrameType | None) -> None:
        self.received = signal.Signals(number).name

    @contextlib.contextmanager
    def listening(self, names: str) -> Iterator[StopRequests]:
        """Handle the named signals inside the block (in the main thread only; elsewhere, as before) and put the
        previous handlers back after it."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for number in signal_numbers(names):
                previous[number] = signal.signal(number, self._handle)
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
