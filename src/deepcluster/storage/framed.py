"""Files framed by a header: 4096 bytes holding a magic line and JSON (the caller's fields, the payload's length
and SHA-256), then the payload. Written atomically; read back, the length and the checksum are checked before
any of the payload is parsed, so truncation and damage are caught by this module, not by a parser.

Checkpoints (`checkpoints.py`) and similarity indexes (`cluster/index.py`) are files of this kind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from deepcluster.storage.files import atomic_write

HEADER_SIZE = 4096
_CHUNK = 1 << 22


class FrameError(ValueError):
    """Why a framed file cannot be read (its header, length or checksum); the caller names the file's kind."""


class PayloadSink:
    """The write-only file a payload is written to: it hashes and counts what goes through it, and keeps the
    OSError of a failed write (parsers' writers report it as a RuntimeError without its errno)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.sha, self.length = handle, hashlib.sha256(), 0
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.length += len(data)
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


class PayloadWindow(io.RawIOBase):
    """The payload of an open framed file, read as a file of its own (no copy in memory)."""

    def __init__(self, handle: IO[bytes], length: int) -> None:
        super().__init__()
        self.handle, self.length, self.pos = handle, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.length}[whence] + pos
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.length - self.pos))
        self.handle.seek(HEADER_SIZE + self.pos)
        got = self.handle.readinto(memoryview(buffer)[:n]) or 0
        self.pos += got
        return got


def write_framed(
    path: str | os.PathLike[str],
    magic: bytes,
    fields: dict[str, Any],
    write_payload: Callable[[PayloadSink], None],
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Write `path` atomically: `write_payload(sink)` writes the payload, then the header (`fields` with
    `length` and `sha256`) goes in front. A failed write raises its own OSError (storage.WriteFailed)."""

    def write(handle: IO[bytes]) -> None:
        handle.write(bytes(HEADER_SIZE))
        sink = PayloadSink(handle)
        try:
            write_payload(sink)
        except Exception:
            if sink.error is not None:
                raise sink.error from None
            raise
        header = (
            magic + json.dumps({**fields, "length": sink.length, "sha256": sink.sha.hexdigest()}).encode()
        )
        if len(header) + 1 > HEADER_SIZE:
            raise ValueError(f"{path}: header fields too large ({len(header)} bytes)")
        handle.seek(0)
        handle.write((header + b"\n").ljust(HEADER_SIZE, b" "))
        handle.seek(0, os.SEEK_END)

    atomic_write(path, write, before_replace=before_replace)


def parse_header(head: bytes, magic: bytes) -> dict[str, Any] | None:
    """The JSON fields of a header read from a file's start; None when it does not start with `magic`;
    FrameError when it does but the fields do not parse."""
    if not head.startswith(magic):
        return None
    try:
        fields = json.loads(head[len(magic) :].split(b"\n", 1)[0])
    except ValueError as error:
        raise FrameError(f"its header does not parse ({error})") from None
    if not isinstance(fields, dict) or not isinstance(fields.get("length"), int):
        raise FrameError("its header does not parse (no payload length)")
    return fields


def read_fields(path: str | os.PathLike[str], magic: bytes) -> dict[str, Any] | None:
    """The header's fields of `path`, or None (no such file, another kind of file, a header that does not
    parse): for callers that only want to know, e.g. where a damaged checkpoint stood."""
    try:
        with open(path, "rb") as handle:
            return parse_header(handle.read(HEADER_SIZE), magic)
    except (OSError, FrameError):
        return None


def check_length(path: Path, fields: dict[str, Any]) -> None:
    """FrameError unless `path` is as long as its header says (a cheap check: one stat)."""
    size, expected = path.stat().st_size, HEADER_SIZE + fields["length"]
    if size != expected:
        what = "truncated" if size < expected else "too long"
        raise FrameError(f"{what}: {size} bytes, the header says {expected}")


def verified_payload(handle: IO[bytes], path: Path, fields: dict[str, Any]) -> PayloadWindow:
    """The payload of the open framed file `handle` after its length and checksum are checked against
    `fields`; FrameError saying what is wrong."""
    check_length(path, fields)
    sha = hashlib.sha256()
    handle.seek(HEADER_SIZE)
    while chunk := handle.read(_CHUNK):
        sha.update(chunk)
    if sha.hexdigest() != fields.get("sha256"):
        raise FrameError("its checksum does not match its contents")
    return PayloadWindow(handle, fields["length"])
