"""Rows of a feature matrix split across the processes of a torchrun job: checking the shards, moving rows.

Shards: process r holds rows [offset_r, offset_r + n_r) of the N x D feature matrix, in contiguous blocks in
rank order (as `deepcluster.engine.distributed.shard_range` cuts them); a shard may be empty (shape (0, D)).
`_gather_layout` all-gathers every rank's shard shape and checks that the shards and the other arguments
agree across ranks; `_all_reduce_sum`, `_all_gather_rows` and `_gather_rows_to_root` are the collectives the
fits in `deepcluster.cluster.distributed` use. They run on the default process group (`torch.distributed`)
with tensors on the given device ('cpu' for gloo, this process's CUDA device for NCCL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from deepcluster.cluster.preprocess import as_float32_matrix

# Arguments compared across ranks are sent as int64; seeds and other large values are compared mod 2^62.
_PARAM_MOD = 1 << 62


@dataclass(frozen=True)
class _Layout:
    """Where this rank's shard lies in the global matrix."""

    rank: int
    sizes: tuple[int, ...]  # rows of every rank's shard, in rank order
    d: int

    @property
    def offset(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def n_total(self) -> int:
        return sum(self.sizes)


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _checked_shard(shard: np.ndarray) -> np.ndarray:
    """The shard as a float32 C-contiguous [n, D] array; n may be 0 (a rank with no rows)."""
    arr = np.asarray(shard)
    if arr.ndim == 2 and arr.shape[0] == 0 and arr.shape[1] > 0:
        return np.zeros((0, arr.shape[1]), dtype=np.float32)
    return as_float32_matrix(arr, name="features")


def _param(value: float | int | None) -> int:
    """An argument as an int64 for comparison across ranks (floats by their bits, None as -1)."""
    if value is None:
        return -1
    if isinstance(value, float):
        return int(np.array(value, dtype=np.float64).view(np.int64))
    return int(value) % _PARAM_MOD


def _gather_layout(
    shard: np.ndarray,
    params: dict[str, float | int | None],
    device: torch.device,
    check: Callable[[np.ndarray], None] | None = None,
) -> tuple[np.ndarray, _Layout]:
    """Check this rank's shard (and `check(shard)`), all-gather every rank's shape, validity and `params`.

    Raises ValueError on every rank when any rank's shard is invalid, the dimensions differ, or a parameter
    differs across ranks, so that no rank is left waiting in a later collective.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    arr = np.zeros((0, 0), dtype=np.float32)
    error: ValueError | None = None
    try:
        arr = _checked_shard(shard)
        if check is not None:
            check(arr)
    except ValueError as exc:
        error = exc
    header = [0 if error else 1, arr.shape[0], arr.shape[1], *(_param(v) for v in params.values())]
    local = torch.tensor(header, dtype=torch.int64, device=device)
    table = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(table, local)
    rows = torch.stack(table).cpu().numpy()
    bad = [r for r in range(world) if rows[r, 0] == 0]
    if error is not None:
        raise ValueError(f"rank {rank}: {error}") from error
    if bad:
        raise ValueError(
            f"the inputs of rank(s) {bad} are invalid (see the error raised there); every rank must pass "
            "a valid shard."
        )
    if len(set(rows[:, 2].tolist())) > 1:
        raise ValueError(
            f"feature shards have different dimensions across ranks ({rows[:, 2].tolist()}); every rank "
            "must pass rows of the same feature dimension D."
        )
    for i, name in enumerate(params):
        values = rows[:, 3 + i]
        if len(set(values.tolist())) > 1:
            raise ValueError(f"{name} differs across ranks; pass the same {name} on every rank.")
    return arr, _Layout(rank=rank, sizes=tuple(int(s) for s in rows[:, 1]), d=int(rows[0, 2]))


def _all_reduce_sum(tensor: torch.Tensor) -> None:
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def _all_gather_rows(local: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Every rank's `local` rows (counts[r] of them on rank r) concatenated in rank order, on every rank."""
    top = max(counts)
    if top == 0:
        return local.new_zeros((0, *local.shape[1:]))
    padded = local.new_zeros((top, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])


def _gather_rows_to_root(local: np.ndarray, counts: Sequence[int], device: torch.device) -> np.ndarray | None:
    """Every rank's float32 `local` rows [counts[r], D] concatenated in rank order on rank 0; None elsewhere."""
    top = max(counts)
    if top == 0:
        return np.zeros((0, local.shape[1]), dtype=np.float32) if dist.get_rank() == 0 else None
    padded = torch.zeros((top, local.shape[1]), dtype=torch.float32, device=device)
    padded[: local.shape[0]] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).to(device)
    if dist.get_rank() != 0:
        dist.gather(padded, None, dst=0)
        return None
    parts = [torch.empty_like(padded) for _ in counts]
    dist.gather(padded, parts, dst=0)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]).cpu().numpy()
