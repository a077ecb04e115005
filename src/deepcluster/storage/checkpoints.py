"""Checkpoint files that load without running code, and the run's last and previous checkpoints.

A file is a 4096-byte header (a magic line, then JSON: file format, payload length, SHA-256, where the run stood)
followed by `torch.save` of a state made of tensors, numbers, strings, bytes, lists, tuples and dicts only
(NumPy arrays are stored as tensors and given back as arrays), so `torch.load(weights_only=True)` reads it: no
pickled object, no code. A truncated or damaged file is caught by the length and the checksum before anything is
unpickled. Files of the earlier format (a plain pickle with NumPy objects) load only when the caller trusts them.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from deepcluster.config import ConfigError
from deepcluster.storage.files import sync_folder
from deepcluster.storage.framed import (
    HEADER_SIZE,
    FrameError,
    parse_header,
    read_fields,
    verified_payload,
    write_framed,
)

log = logging.getLogger("deepcluster")

FILE_FORMAT = 3
"""1-2: plain pickles with NumPy objects (before format 3 the file had no header); 3: this module's format."""
MAGIC = b"DEEPCLUSTER-CHECKPOINT\n"
_NUMPY = "__numpy__"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used."""


class DamagedCheckpoint(CheckpointError):
    """Truncated, corrupt or not a checkpoint at all: an earlier checkpoint may stand in for it."""


class UntrustedCheckpoint(CheckpointError):
    """The file needs a full unpickle (which can run code) and the caller did not say it trusts it."""


class NoCheckpoint(CheckpointError):
    """The run has not written a checkpoint yet."""


# ------------------------------------------------------------------------------------------------ contents
def encode(value: Any) -> Any:
    """`value` with every NumPy array as {"__numpy__": tensor} and every NumPy scalar as a Python number."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OUSV":
            raise TypeError(f"a checkpoint cannot hold a NumPy array of dtype {value.dtype}")
        native = value.astype(value.dtype.newbyteorder("="), copy=False)
        return {_NUMPY: torch.from_numpy(np.ascontiguousarray(native))}
    if isinstance(value, np.generic):
        return value.item()
    return _rebuild(value, encode)


def decode(value: Any) -> Any:
    """The inverse of `encode`."""
    if type(value) is dict and len(value) == 1 and _NUMPY in value:
        return value[_NUMPY].numpy()
    return _rebuild(value, decode)


def _rebuild(value: Any, convert: Callable[[Any], Any]) -> Any:
    """Containers rebuilt with `convert` applied to their items (a state_dict keeps its type and metadata)."""
    if isinstance(value, dict):
        out = type(value)((convert(k), convert(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(value, list):
        return [convert(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(convert(v) for v in value)
    return value


# ------------------------------------------------------------------------------------------------ files
def save_checkpoint(
    path: str | os.PathLike[str],
    state: dict[str, Any],
    info: dict[str, Any] | None = None,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Write `state` atomically in the current format; `info` (small JSON; default: where the run stood,
    `position`) goes in the header, readable even when the payload is damaged. `before_replace` runs once the
    new file is complete, just before it takes `path`'s place."""
    encoded = encode(state)
    fields = {"format": FILE_FORMAT, **(position(state) if info is None else info)}
    write_framed(path, MAGIC, fields, lambda sink: torch.save(encoded, sink), before_replace=before_replace)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The header's JSON of a current-format file, or None (an older file, or a header that does not parse)."""
    return read_fields(path, MAGIC)


def load_checkpoint(path: str | os.PathLike[str], trusted: bool = False) -> dict[str, Any]:
    """Read a checkpoint without running code (on the CPU). DamagedCheckpoint: truncated, corrupt, not a
    checkpoint; UntrustedCheckpoint: it needs a full unpickle and `trusted` is False; FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with path.open("rb") as handle:
        head = handle.read(HEADER_SIZE)
        try:
            fields = parse_header(head, MAGIC)
            if fields is None:
                handle.seek(0)
                return _load_older(path, handle, head, trusted)
            if fields.get("format", 0) > FILE_FORMAT:
                raise CheckpointError(
                    f"{path}: checkpoint format {fields['format']} is newer than this deepcluster reads "
                    f"({FILE_FORMAT}); upgrade deepcluster"
                )
            payload = verified_payload(handle, path, fields)
        except FrameError as error:
            raise DamagedCheckpoint(f"{path}: damaged checkpoint ({error})") from None
        state = _safe_load(path, payload, trusted)
    return decode(state)


def _safe_load(path: Path, handle: IO[bytes], trusted: bool) -> Any:
    try:
        return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise DamagedCheckpoint(f"{path}: damaged checkpoint ({error})") from None
        if not trusted:
            first = str(error).strip().splitlines()
            raise UntrustedCheckpoint(
                f"{path}: refused: it holds objects that only a full unpickle reads, which can run code "
                f"({first[-1] if first else 'weights_only load failed'}). Load it only if you trust where it "
                "came from: pass --trust-checkpoint"
            ) from None
    log.warning(
        "%s: loading with a full unpickle (--trust-checkpoint): this can run code from the file", path
    )
    handle.seek(0)
    return torch.load(handle, map_location="cpu", weights_only=False)


def _load_older(path: Path, handle: IO[bytes], head: bytes, trusted: bool) -> dict[str, Any]:
    """A file of format 1 or 2: a zip of torch.save (or a legacy pickle) without our header."""
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):
        raise DamagedCheckpoint(f"{path}: not a checkpoint (no deepcluster header, not a torch file)")
    try:
        return decode(_safe_load(path, handle, trusted))
    except CheckpointError:
        raise
    except Exception as error:  # a truncated zip, a broken pickle
        raise DamagedCheckpoint(f"{path}: damaged checkpoint ({type(error).__name__}: {error})") from None


def rotate(last: Path, previous: Path) -> Callable[[], None]:
    """A `before_replace` hook that keeps `last` as `previous` before a new `last` takes its place."""

    def keep() -> None:
        if last.exists():
            os.replace(last, previous)
            sync_folder(last.parent)

    return keep


def load_run_checkpoint(last: Path, previous: Path, trusted: bool, writable: bool) -> dict[str, Any]:
    """`last`, or `previous` when `last` is missing or damaged (see `RunDir.load_checkpoint`)."""
    if not last.exists() and not previous.exists():
        raise NoCheckpoint(f"no checkpoint in {last.parent} (the run stopped before writing its first)")
    damaged: DamagedCheckpoint | None = None
    if last.exists():
        try:
            state = load_checkpoint(last, trusted)
        except DamagedCheckpoint as error:
            damaged = error
        else:
            if writable and read_header(last) is None:  # trusted, older format: rewrite it in this one
                save_checkpoint(last, state)
                log.warning(
                    "%s: rewritten in checkpoint format %d (it now loads without trust)", last, FILE_FORMAT
                )
            return state
    if not previous.exists():
        raise damaged or NoCheckpoint(f"no checkpoint in {last.parent}")
    try:
        state = load_checkpoint(previous, trusted)
    except DamagedCheckpoint as error:
        raise DamagedCheckpoint(
            f"no readable checkpoint: {damaged or 'no ' + str(last)}; and {error}"
        ) from None
    lost, there = read_header(last) or {}, position(state)
    if "global_step" in lost:
        back = f"{lost['global_step'] - there['global_step']} step(s) back"
    else:
        back = "the damaged file's position is unknown"
    reason = str(damaged) if damaged else f"{last} is missing"
    log.warning(
        "%s; using the previous checkpoint %s instead (epoch %d, step %d: %s)",
        reason,
        previous,
        there["epoch"],
        there["step"],
        back,
    )
    if writable and damaged is not None:
        os.replace(last, last.with_name("damaged.pt"))
        log.warning("the damaged file is kept as %s", last.with_name("damaged.pt"))
    return state


def position(state: dict[str, Any]) -> dict[str, int]:
    """Where the run of a checkpoint stood (the header's info): epoch, step, global step."""
    loop = state.get("loop") or {}
    epoch, step = int(loop.get("epoch", 0)), int(loop.get("step", 0))
    per_epoch = int(state.get("steps_per_epoch") or 0)
    return {"epoch": epoch, "step": step, "global_step": epoch * per_epoch + step}
