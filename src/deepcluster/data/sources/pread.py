"""Reading byte ranges of files without holding them in memory: `PositionalFiles` (one descriptor per file and
process, `os.pread`) and `stored_npy_range` (where an uncompressed .npz member's array lies in the file).

A source that reads its images this way keeps only its index in RAM, so a streamed run (`data.cache=stream`)
holds O(batch) images whatever the collection's size; the kernel's page cache, not the process, keeps the
bytes recently read.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
"""A zip local file header: signature, version, flags, method, time, date, CRC, sizes, name and extra lengths."""


class PositionalFiles:
    """Byte ranges of a list of files, read with `os.pread` (a positional read, no shared file position, so
    decode threads share a descriptor). One descriptor per file and process, opened on first use; a process
    forked or unpickled from this one opens its own."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._handles: dict[tuple[int, int], int] = {}

    def read(self, file: int, offset: int, size: int, what: str) -> bytes:
        """`size` bytes of file number `file` from `offset`; OSError naming the file and `what` when it ends
        before them (the file was truncated after it was opened)."""
        key = (os.getpid(), file)
        fd = self._handles.get(key)
        if fd is None:
            fd = os.open(self.paths[file], os.O_RDONLY)
            first = self._handles.setdefault(key, fd)
            if first != fd:  # another thread opened it at the same moment: keep one
                os.close(fd)
                fd = first
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{self.paths[file]}: truncated at {what}")
        return data

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    def __del__(self) -> None:
        for (pid, _), fd in getattr(self, "_handles", {}).items():
            if pid == os.getpid():
                os.close(fd)


def stored_npy_range(path: Path, member: str) -> tuple[int, int, np.dtype, tuple[int, ...]] | None:
    """Where the array of the .npz member `member` (e.g. ``jpeg_train.npy``) lies in `path`, as (offset of its
    first byte, its length in bytes, dtype, shape), when the member is stored uncompressed (`np.savez`) as a
    C-order array; None when it is compressed (`np.savez_compressed`) or laid out otherwise, or the file is
    not a readable zip archive (the caller then loads the array with `np.load`)."""
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
            info = archive.getinfo(member)
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            handle.seek(info.header_offset)
            header = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
            if header[0] != b"PK\x03\x04":
                return None
            handle.seek(info.header_offset + _LOCAL_HEADER.size + header[9] + header[10])
            member_start = handle.tell()
            readers = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }
            reader = readers.get(np.lib.format.read_magic(handle))
            if reader is None:
                return None
            shape, fortran, dtype = reader(handle)
            start = handle.tell()
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, struct.error):
        return None
    length = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if fortran or dtype.hasobject or start - member_start + length != info.file_size:
        return None
    return start, length, dtype, tuple(shape)
