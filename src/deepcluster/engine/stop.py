"""Pre-emption: the signals a cluster sends before it stops a job (SIGTERM; SLURM's `--signal=USR1@120`) ask
the run to stop at the next step boundary, where every process agrees on the step, writes a checkpoint at that
step and leaves with `PREEMPTED_EXIT` (the same command with `--auto-resume` then continues exactly there)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from deepcluster.config.run import PREEMPTED_EXIT

__all__ = ["PREEMPTED_EXIT", "Preempted", "StopRequests", "signal_numbers", "stopping"]


class Preempted(Exception):
    """The run stopped on a stop signal: at a step (its checkpoint written), or while its report was built."""

    @classmethod
    def at_step(cls, signal_name: str, epoch: int, step: int, run_dir: str) -> Preempted:
        return cls(
            f"stopped by {signal_name} at epoch {epoch}, step {step}; the checkpoint of that step is in {run_dir}: "
            f"run the same command with --auto-resume (or deepcluster train --resume {run_dir}) to continue"
        )


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

    def _note(self, number: int, _frame: FrameType | None) -> None:
        self.received = signal.Signals(number).name

    @contextlib.contextmanager
    def listening(self, names: str) -> Iterator[StopRequests]:
        """Note the named signals inside the block (the loop stops at its next step) and put the previous
        handlers back after it."""
        with _handling(names, self._note):
            yield self


@contextlib.contextmanager
def stopping(names: str, message: str) -> Iterator[None]:
    """Inside the block, the named signals raise `Preempted(message)` at once (where nothing needs a checkpoint,
    e.g. while the report of a finished run is built)."""

    def stop(number: int, _frame: FrameType | None) -> None:
        raise Preempted(f"stopped by {signal.Signals(number).name} {message}")

    with _handling(names, stop):
        yield


@contextlib.contextmanager
def _handling(names: str, handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """`handler` for the named signals inside the block (in the main thread only; elsewhere, as before)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in signal_numbers(names):
            previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
