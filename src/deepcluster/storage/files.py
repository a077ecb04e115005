"""Atomic writes (a file is either the old version or the complete new one, never half of each); a write that
fails raises `WriteFailed` naming the file, and leaves the old version in place."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)
"""Errors of a write that the user can fix (space, quota, limits, permissions, the disk)."""
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
"""Errors that only a write gives."""


class WriteFailed(OSError):
    """Writing a file failed: its errno, the file's (final) name, and the reason."""

    def __str__(self) -> str:
        return f"could not write {self.filename}: {self.strerror}"


def file_mode() -> int:
    """The mode a new file gets from open(): 0o666 less the process's umask (read from /proc, so that the umask
    is never changed, not even for a moment; 0o022 assumed where /proc does not say)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


@contextlib.contextmanager
def ctrl_c_after() -> Iterator[None]:
    """Inside the block a Ctrl-C (SIGINT) is noted, not raised; it is raised as KeyboardInterrupt when the block
    ends. A KeyboardInterrupt in the middle of `torch.save` leaves its zip writer in a state whose own error then
    replaces the interrupt (a traceback and exit 1 instead of "interrupted", exit 130). Only where Python's own
    handler is in place, in the main thread (elsewhere signals are not ours to change)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    noted: list[int] = []
    signal.signal(signal.SIGINT, lambda number, _frame: noted.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if noted:
        raise KeyboardInterrupt


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], None],
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Call `write(file)` on a temporary file beside `path`, flush it to disk, then rename it over `path`
    (`before_replace`, e.g. keeping the old file under another name, runs just before the rename). A Ctrl-C
    during the write takes effect when it is complete."""
    with ctrl_c_after():
        _write_and_replace(Path(path), write, before_replace)


def _write_and_replace(
    path: Path, write: Callable[[IO[bytes]], None], before_replace: Callable[[], None] | None
) -> None:
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())  # mkstemp's file is private (0600); the result is what open() would make
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        tmp = None
    except OSError as error:
        if error.errno in WRITE_ERRNOS and not isinstance(error, WriteFailed):
            raise WriteFailed(error.errno, error.strerror, str(path)) from error
        raise
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """fsync a folder, so that renames in it survive a crash of the machine (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_save_numpy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """np.save atomically."""
    atomic_write(path, lambda handle: np.save(handle, array))
