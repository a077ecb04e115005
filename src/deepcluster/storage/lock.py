"""One process at a time in a run directory: a lock file (`RUN/.lock`) held with `flock`, naming its holder.

The kernel drops a `flock` when its process dies, however it dies, so a run killed with `kill -9` leaves a
stale lock that the next process simply takes over (and says so); a live holder is named in the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from deepcluster.config import ConfigError

log = logging.getLogger("deepcluster")


class RunInUse(ConfigError):
    """Another live process holds the run directory."""


class RunLock:
    """`with RunLock(run_root, "train"):` holds the run directory for this process."""

    def __init__(self, root: str | os.PathLike[str], what: str) -> None:
        self.path = Path(root) / ".lock"
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise RunInUse(
                f"{self.path.parent}: in use by {holder}; wait for it to end or stop it "
                f"(a run directory takes one process at a time; its lock is {self.path})"
            ) from None
        stale = os.pread(fd, 4096, 0)
        if stale.strip():
            log.warning(
                "%s: took over the lock of %s, which is no longer running", self.path.parent, _describe(stale)
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.what,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": " ".join(sys.argv[:6]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the file (a clean exit leaves no holder to take over) and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    try:
        holder = json.loads(raw)
        return f"{holder['command']} (PID {holder['pid']} on {holder['host']}, since {holder['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
