"""Where a run stands, and the checkpoint that carries it: loop position, labels, history, every module's and
optimiser's state and every process's RNG states, so that a resumed run continues exactly where it stopped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHECKPOINT_VERSION = 3
"""2: label updates counted (`updates_done`); 3: `steps_per_epoch` kept, the file in storage's safe format (no
pickled objects: NumPy arrays as tensors)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass
class LoopState:
    """Where the loop stands, beyond the modules' and optimisers' own states."""

    epoch: int = 0
    step: int = 0
    updates_done: int = 0
    """How many entries of the method's label-update schedule have run."""
    labels: np.ndarray | None = None
    prev_labels: np.ndarray | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    loss_sum: float = 0.0
    loss_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's `loop` field."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "updates_done": self.updates_done,
            "labels": self.labels,
            "prev_labels": self.prev_labels,
            "history": self.history,
            "record": self.record,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
        }


def checkpoint_state(
    config: dict[str, Any],
    networks: dict[str, Any],
    state: LoopState,
    indices: np.ndarray,
    rng: list[dict[str, Any]],
    steps_per_epoch: int,
) -> dict[str, Any]:
    """The checkpoint of a run: its settings, the networks' fields (`Networks.state`), the loop, the source
    indices of the images it trains on, the RNG states of every process (`rng`, in rank order) and the epoch's
    length in steps."""
    return {
        "version": CHECKPOINT_VERSION,
        "config": config,
        **networks,
        "loop": state.to_dict(),
        "indices": indices,
        "rng": rng[0],
        "rng_ranks": rng,
        "steps_per_epoch": steps_per_epoch,
    }


def loop_state(checkpoint: dict[str, Any], schedule: list[int], steps_per_epoch: int) -> LoopState:
    """The `LoopState` a checkpoint holds; version 1 kept the epoch of the last clustering instead of a count of
    updates done, which is rebuilt from the method's label-update `schedule`."""
    loop = dict(checkpoint["loop"])
    if checkpoint.get("version", 1) < 2:
        step = loop["epoch"] * steps_per_epoch + loop["step"]
        done_now = loop.pop("labels_epoch") >= loop["epoch"]
        loop["updates_done"] = sum(1 for s in schedule if s < step or (s == step and done_now))
    return LoopState(**loop)


def rng_states(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """Every saving process's RNG states, in rank order."""
    return checkpoint.get("rng_ranks") or [checkpoint["rng"]]
