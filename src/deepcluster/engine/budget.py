"""A time budget the schedule fits (`run.max_minutes`): the run times its first label update and a few training
steps, then plans its epochs so that the warm-up, the cosine schedule and the last label update all end within
the budget.

The plan is a number of epochs and an epoch size (images drawn per epoch): labels are still made where the
method's schedule puts them (by default at the start of every epoch), and the learning-rate schedule spans the
planned steps. It is written into the run's settings (`run.epochs`, `optim.epoch_size`, `run.budget_plan`), so
config.yaml reproduces the run and a resume keeps the plan.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepcluster.config import TrainConfig
from deepcluster.data.stream import batches
from deepcluster.engine.device import Precision
from deepcluster.engine.optimizers import make_optimizer
from deepcluster.methods import Method
from deepcluster.methods.base import View
from deepcluster.seeding import torch_generator

log = logging.getLogger("deepcluster")

MARGIN = 0.9
"""Share of the remaining budget the plan fills: the rest absorbs what the timing misses. Measured (issue 29,
2-core Zen 4, bf16): a run's steps took 1.03 to 1.21 times the probe's mean, epoch by epoch (the machine's speed
drifts between epochs by up to 15 %; the loop adds its checkpoints, the sampler's rows and the processes'
all-reduce), and with 0.97 runs ended 5 to 12 % past their budget."""
PROBE_STEPS = 5
"""Steps timed (after one more that warms the kernels up), each on other images, as the run's steps are."""


@dataclass(frozen=True)
class Costs:
    """Seconds measured at the start of a run."""

    spent: float
    """Already gone from the budget (the first label update included)."""
    step: float
    """One training step."""
    update: float
    """One label update (a pass and the assignment, with the checkpoint after it)."""
    epoch_end: float
    """The end of an epoch (the k-NN monitor and the checkpoint)."""


@dataclass(frozen=True)
class Plan:
    epochs: int
    steps_per_epoch: int
    steps: int
    updates: int
    """Label updates after the first (the final assignment included)."""
    seconds: float
    """What the plan is expected to take from the run's start."""


def plan_budget(
    budget: float,
    costs: Costs,
    steps_per_pass: int,
    updates_after_first: Callable[[int, int], int],
) -> Plan:
    """The epochs and steps per epoch that fill `budget` seconds: about one pass over the data
    (`steps_per_pass` steps) per epoch, as many epochs as fit, then the most steps per epoch with which every
    step, label update (`updates_after_first(steps_per_epoch, epochs)`, the final assignment included) and
    epoch end fits. At least one epoch of one step."""
    available = budget * MARGIN - costs.spent

    def seconds(epochs: int, per_epoch: int) -> float:
        updates = updates_after_first(per_epoch, epochs)
        return epochs * (per_epoch * costs.step + costs.epoch_end) + updates * costs.update

    per_pass = seconds(1, steps_per_pass)
    epochs = max(1, round(available / per_pass)) if per_pass > 0 else 1
    while epochs > 1 and seconds(epochs, 1) > available:
        epochs -= 1
    low, high = 1, max(1, math.ceil(available / max(costs.step, 1e-9)))
    while low < high:  # the most steps per epoch that fit (seconds grows with them)
        middle = (low + high + 1) // 2
        if seconds(epochs, middle) <= available:
            low = middle
        else:
            high = middle - 1
    per_epoch = low
    updates = updates_after_first(per_epoch, epochs)
    return Plan(epochs, per_epoch, epochs * per_epoch, updates, costs.spent + seconds(epochs, per_epoch))


def counted_updates(method: Method) -> Callable[[int, int], int]:
    """Label updates after the one at step 0 in `method`'s schedule, plus the final assignment."""

    def count(steps_per_epoch: int, epochs: int) -> int:
        return sum(1 for step in method.label_update_steps(steps_per_epoch, epochs) if step > 0) + 1

    return count


def describe(plan: Plan, budget_minutes: float, costs: Costs) -> str:
    """The plan in one line, for the log and config.yaml (`run.budget_plan`)."""
    return (
        f"{budget_minutes:g} minutes: {plan.steps} steps ({plan.epochs} epoch(s) of {plan.steps_per_epoch}), "
        f"{plan.updates + 1} label updates, about {costs.step:.3g} s per step and {costs.update:.3g} s per "
        f"update; expected to end at {plan.seconds / 60:.2f} minutes"
    )


def planned_config(config: TrainConfig, plan: Plan, batch_size: int, line: str) -> TrainConfig:
    """`config` with the plan as its settings: run.epochs, optim.epoch_size (images per epoch), run.budget_plan."""
    optim = dataclasses.replace(config.optim, epoch_size=plan.steps_per_epoch * batch_size)
    run = dataclasses.replace(config.run, epochs=plan.epochs, budget_plan=line)
    return dataclasses.replace(config, optim=optim, run=run)


def time_steps(
    method: Method,
    backbone: nn.Module,
    heads: nn.Module,
    view: View,
    precision: Precision,
    images: Any,
    labels: torch.Tensor,
    batch_size: int,
    config: TrainConfig,
) -> float:
    """Seconds of one training step of `method` at `batch_size` images (the mean of `PROBE_STEPS` steps on
    different images, after one more), timed on copies of the networks (the run's own weights, optimiser state,
    batch-norm statistics and random generators are left as they were)."""
    backbone, heads = copy.deepcopy(backbone).train(), copy.deepcopy(heads).train()
    trainable = [p for p in [*backbone.parameters(), *heads.parameters()] if p.requires_grad]
    optim = config.optim
    optimizer = make_optimizer(optim.optimizer, trainable, optim.lr, optim.momentum, optim.weight_decay)
    order = torch.randperm(len(labels), generator=torch_generator(PROBE_STEPS))
    parts = [order[(i * batch_size + torch.arange(batch_size)) % len(labels)] for i in range(PROBE_STEPS + 1)]
    device = precision.device
    times = []
    devices = [device] if device.type == "cuda" else []
    feed = batches(images, [rows.to(images.device) for rows in parts])
    with torch.random.fork_rng(devices=devices):
        for probe, (rows, batch) in enumerate(zip(parts, feed, strict=True)):
            began = time.perf_counter()
            generator = torch_generator(probe)
            x = view(batch.to(device), generator)
            with precision.autocast():
                outputs, targets = method.forward(backbone, heads, x, labels[rows].to(device), generator)
            loss = method.loss(outputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - began)
    feed.close()
    return statistics.fmean(times[1:])
