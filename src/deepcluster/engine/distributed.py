"""Runs on several processes (torchrun): who this process is, which rows are its own, and the collectives the
engine needs. A single process (no torchrun) never touches torch.distributed: every collective here is then the
identity.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and GROUP_RANK (the node); the process group is NCCL when the run
is on CUDA GPUs (one per process, cuda:LOCAL_RANK) and gloo on CPUs.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")

_GATHER_CHUNK_BYTES = 64 * 1024 * 1024
"""Rows sent per gather round are capped at about this many bytes per process."""


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of `n` that process `rank` of `world_size` owns: contiguous blocks, in rank order,
    whose sizes differ by at most one (the first n % world_size blocks are one longer)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_range: rank {rank} is not in a world of {world_size} process(es)")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def world_size() -> int:
    """The number of processes torchrun started (its WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one process (torchrun's WORLD_SIZE)."""
    return world_size() > 1


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node: int = 0
    device: torch.device = torch.device("cpu")
    """Where collective tensors live: the process's GPU for NCCL, the CPU for gloo."""
    owns_group: bool = False
    """This object's set-up joined the process group (and `close` leaves it)."""

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, logs and outputs."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This process's rows [start, stop) of `n`."""
        return shard_range(n, self.rank, self.world_size)

    def batch_part(self, step: int, batch_size: int) -> slice:
        """This process's positions, in an epoch's list of sampled images, of step `step`'s batch of
        `batch_size` (the total over the processes, a multiple of their number): the processes' parts, in rank
        order, are the whole batch, so the epoch's sample is drawn once for all of them."""
        part = batch_size // self.world_size
        first = step * batch_size + self.rank * part
        return slice(first, first + part)

    # ------------------------------------------------------------ collectives (identities in one process)
    def barrier(self) -> None:
        """Wait for every process."""
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, value: T) -> T:
        """The main process's `value` (any picklable object), on every process."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_array(self, array: np.ndarray | None) -> np.ndarray:
        """The main process's array (others pass None), on every process."""
        if not self.distributed:
            assert array is not None
            return array
        meta = self.broadcast_object(None if array is None else (array.shape, array.dtype.str))
        shape, dtype = meta
        tensor = (
            torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
            if self.is_main
            else torch.empty(
                shape, dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype, device=self.device
            )
        )
        dist.broadcast(tensor, src=0)
        return tensor.cpu().numpy()

    def all_gather_tensor(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Every process's `tensor` (equal shapes on every process), concatenated along `dim` in rank order, on
        the tensor's device; `tensor` itself in one process."""
        if not self.distributed:
            return tensor
        send = tensor.contiguous().to(self.device)
        parts = [torch.empty_like(send) for _ in range(self.world_size)]
        dist.all_gather(parts, send)
        return torch.cat(parts, dim=dim).to(tensor.device)

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Give every process the main process's buffers of `module` (e.g. batch-norm running statistics, which
        each process updates from its own part of the batch)."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)

    def mean(self, value: float) -> float:
        """The mean of `value` over the processes."""
        return self.mean_and_any(value, False)[0]

    def mean_and_any(self, value: float, flag: bool) -> tuple[float, bool]:
        """The mean of `value` over the processes, and whether any process's `flag` is set (one all-reduce)."""
        if not self.distributed:
            return value, flag
        tensor = torch.tensor([value, float(flag)], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor[0]) / self.world_size, bool(tensor[1] > 0)

    def gather_rows(
        self, shard: np.ndarray, n_total: int, allocate: Callable[[int, int], np.ndarray]
    ) -> np.ndarray | None:
        """Concatenate every process's `shard` (its rows of `shard_range(n_total, ...)`, float32 [rows, D]) into
        `allocate(n_total, D)` on the main process, in bounded rounds; None on the others."""
        if not self.distributed:
            return shard
        d = shard.shape[1]
        bounds = [shard_range(n_total, r, self.world_size) for r in range(self.world_size)]
        longest = max(stop - start for start, stop in bounds)
        rows = max(1, _GATHER_CHUNK_BYTES // max(1, d * 4))
        out = allocate(n_total, d) if self.is_main else None
        for begin in range(0, longest, rows):
            piece = np.zeros((rows, d), dtype=np.float32)
            mine = shard[begin : begin + rows]
            piece[: len(mine)] = mine
            send = torch.from_numpy(piece).to(self.device)
            buckets = [torch.empty_like(send) for _ in range(self.world_size)] if self.is_main else None
            dist.gather(send, gather_list=buckets, dst=0)
            if out is not None and buckets is not None:
                for rank, (start, stop) in enumerate(bounds):
                    count = min(rows, max(0, stop - start - begin))
                    if count:
                        out[start + begin : start + begin + count] = buckets[rank][:count].cpu().numpy()
        return out

    def wrap(self, module: nn.Module, every_parameter_used: bool) -> nn.Module:
        """`module` itself in one process; wrapped in DistributedDataParallel (gradients averaged over the
        processes, the main process's weights broadcast first) under torchrun."""
        if not self.distributed:
            return module
        return DistributedDataParallel(
            module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=not every_parameter_used,
        )

    def close(self, wait: bool = False) -> None:
        """Leave the process group (if this object's set-up joined one), after a barrier when `wait`: no
        process then tears its connections down while another is still in a collective."""
        if self.owns_group and dist.is_initialized():
            gc.collect()  # what still refers to the group (a dropped DDP wrapper's cycles) goes now, not at exit
            if wait:
                dist.barrier()
            dist.destroy_process_group()


def process_device(device: torch.device) -> torch.device:
    """This process's device: under torchrun on CUDA, its own GPU cuda:LOCAL_RANK; else `device`."""
    if launched_by_torchrun() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _attempt_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun's restarts (`--max-restarts`), the agent's store seen through a prefix of this attempt:
    the process group's keys of a failed attempt (its workers' addresses) are still in the store the agent
    keeps, and the restarted workers would otherwise read them and try to connect to dead peers. None outside
    torchelastic or when each attempt has a store of its own (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1)."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    agent = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=False,
        timeout=timeout,
    )
    return dist.PrefixStore(f"deepcluster/attempt_{attempt}", agent)


def join_processes(device: torch.device, timeout_minutes: float) -> Processes:
    """This process's `Processes`: a single process unless torchrun started several, in which case join the
    process group (NCCL on CUDA, gloo on CPU) and, on CUDA, pin the process to cuda:LOCAL_RANK.

    `timeout_minutes` bounds how long a process waits for the others in one collective (the main process
    clusters while the others wait, which takes long on large collections)."""
    if not launched_by_torchrun():
        return Processes(device=device)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    node = int(os.environ.get("GROUP_RANK", "0"))
    if device.type == "cuda":
        device = process_device(device)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    owns_group = not dist.is_initialized()
    if owns_group:
        timeout = datetime.timedelta(minutes=timeout_minutes)
        store = _attempt_store(world_size, timeout)
        if store is None:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(
                backend=backend, timeout=timeout, store=store, rank=rank, world_size=world_size
            )
    return Processes(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        node=node,
        device=device,
        owns_group=owns_group,
    )
