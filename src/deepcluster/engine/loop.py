"""The epoch loop shared by every method, read as the papers' algorithm: for each epoch, assign labels when the
method's schedule says so, train the steps on them, finish the epoch; checkpoints make every stop resumable.

One epoch, as data:
    images --cluster view--> backbone [+ heads] --> values --method.assign--> labels      (labels.py)
       `--train view--> backbone + head(s) <-- the method's sampler over labels --> loss --> SGD step

Every random draw is either counter-based (a seed derived from the run's seed and the epoch/step it serves) or
comes from the global generators whose states the checkpoint carries, so a resumed run reaches the same weights
and labels as one that never stopped (same seed, same device and thread count).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from deepcluster.config import TrainConfig, dump_config
from deepcluster.data.stream import batches
from deepcluster.engine.budget import (
    Costs,
    counted_updates,
    describe,
    plan_budget,
    planned_config,
    time_steps,
)
from deepcluster.engine.labels import format_stats
from deepcluster.engine.optimizers import lr_factor
from deepcluster.engine.session import Session
from deepcluster.engine.stop import Preempted, StopRequests
from deepcluster.methods import METHODS
from deepcluster.storage import atomic_write_text

log = logging.getLogger("deepcluster")


@dataclass
class RunResult:
    """What a finished run hands back to the caller."""

    run_dir: Path
    labels: np.ndarray
    indices: np.ndarray
    history: list[dict[str, Any]]
    backbone: nn.Module
    config: TrainConfig | None = None
    """The run's settings, resolved (what config.yaml holds)."""


StepCallback = Callable[["Trainer"], None]


class Trainer(Session):
    """Runs one configuration end to end, or resumes it from its run directory."""

    def __init__(
        self,
        config: TrainConfig,
        resume: bool = False,
        on_step: StepCallback | None = None,
        trust_checkpoint: bool = False,
    ) -> None:
        super().__init__(config, resume, METHODS, trust_checkpoint)
        self.on_step = on_step
        self.stops = StopRequests()

    def fit(self) -> RunResult:
        """Run (or continue) every epoch, then write labels.csv; returns labels and the trained backbone. A stop
        signal (`run.stop_signals`) ends it at the next step with that step's checkpoint: `Preempted`."""
        with self.stops.listening(self.request.run.stop_signals):
            return self._fit()

    def _fit(self) -> RunResult:
        finished = False
        try:
            self.setup()
            started = time.perf_counter()
            if self.config.run.max_minutes and not self.config.run.budget_plan:
                self._plan_budget(started)
            for epoch in range(self.state.epoch, self.config.run.epochs):
                if self.procs.mean_and_any(0.0, self.stops.requested)[1]:  # the last checkpoint is this point
                    self._preempted()
                self._train_epoch(epoch)
                self._finish_epoch(epoch)
                self.save()
            final = self.labeller.final_assignment(self.state)  # labels.csv: the trained network's clusters
            labels, assigner = (self.state.labels, None) if final is None else (final.labels, final.state)
            assert labels is not None
            if self.procs.is_main:
                data = self.data
                names = [data.name_of(int(i)) for i in data.indices]
                self.run_dir.write_labels_csv(data.indices, names, labels, data.true_labels)
                if assigner is not None:
                    self.run_dir.write_assigner(self.config.method, assigner)
            log.info("finished: %s", json.dumps(self.state.history[-1]) if self.state.history else "no epoch")
            finished = True
            return RunResult(
                self.run_dir.root, labels, self.data.indices, self.state.history, self.backbone, self.config
            )
        finally:
            if getattr(self, "nets", None) is not None:
                self.nets.unwrap()
            self.resources.close(finished)

    # ------------------------------------------------------------------ one epoch
    def _train_epoch(self, epoch: int) -> None:
        cfg, state, nets, procs = self.config, self.state, self.nets, self.procs
        self._run_due_updates(epoch)
        if state.labels is None or nets.heads is None:
            raise RuntimeError(f"method {self.method.name} scheduled no label assignment before step 0")
        indices = self.method.sample(
            state.labels, self.steps_per_epoch * self.batch_size, seed=self.seed("sampler", epoch)
        )
        labels = torch.as_tensor(state.labels)
        nets.train()
        images, device = self.data.images, self.precision.device
        updating = 0.0  # seconds of label updates inside the loop, not counted as training
        started = time.perf_counter()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=state.step,
            desc=f"epoch {epoch} train",
            unit="batch",
            disable=None if self.progress else True,
            leave=False,
        )
        first = state.step
        parts = [
            torch.as_tensor(indices[procs.batch_part(step, self.batch_size)])
            for step in range(first, self.steps_per_epoch)
        ]  # this process's part of each step's batch: the processes' parts together are the whole batch
        feed = batches(images, (part.to(images.device) for part in parts))  # streamed: decoded ahead
        while state.step < self.steps_per_epoch:
            began = time.perf_counter()
            if self._run_due_updates(epoch):
                labels = torch.as_tensor(state.labels)
                nets.train()
                updating += time.perf_counter() - began
            step = state.step
            batch = parts[step - first]
            generator = self.generator("augment", epoch, step)
            x = self.train_view(next(feed).to(device, non_blocking=True), generator)
            batch_labels = labels[batch].to(device, non_blocking=True)
            nets.set_lr(self._lr_factor(epoch, step))
            with self.precision.autocast():
                outputs, targets = self.method.forward(
                    nets.train_backbone, nets.train_heads, x, batch_labels, generator
                )
            loss = self.method.loss(outputs, targets)
            value, stop = procs.mean_and_any(float(loss.detach()), self.stops.requested)
            if not math.isfinite(value):
                self.diverged(f"the training loss became {value}")
            nets.step(loss)
            self.method.observe(batch, outputs, procs)
            state.loss_sum += value
            state.loss_count += 1
            state.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
            every = cfg.run.checkpoint_every
            if every and state.step % every == 0 and state.step < self.steps_per_epoch:
                self.save()
            if self.on_step is not None:
                self.on_step(self)
            if stop and state.step < self.steps_per_epoch:  # at an epoch's end: stop after its checkpoint
                self._preempted()
        bar.close()
        feed.close()
        spent = time.perf_counter() - started - updating
        if (
            epoch == cfg.run.epochs - 1
        ):  # an update scheduled after the last step: the trained network's labels
            self._run_due_updates(epoch)
        state.record["seconds_train"] = state.record.get("seconds_train", 0.0) + spent

    def _run_due_updates(self, epoch: int) -> bool:
        """Assign labels if the schedule has an update due at (or, after a resume, before) the current step.

        Several due updates collapse into one. Each update is followed by a checkpoint. Returns True if one ran.
        """
        state = self.state
        due = bisect.bisect_right(self.schedule, epoch * self.steps_per_epoch + state.step)
        if due <= state.updates_done:
            return False
        now, end = epoch * self.steps_per_epoch + state.step, self.config.run.epochs * self.steps_per_epoch
        self.labeller.update(state, epoch, last=now >= end)
        state.updates_done = due
        self.save()
        return True

    def _lr_factor(self, epoch: int, step: int) -> float:
        return lr_factor(self.config.optim, self.config.run.epochs, self.steps_per_epoch, epoch, step)

    def _finish_epoch(self, epoch: int) -> None:
        state = self.state
        if self.monitor is not None:
            began = time.perf_counter()
            state.record["knn_true"] = self.monitor.measure(self.nets, self.precision, self.batch_size)
            state.record["seconds_knn"] = time.perf_counter() - began
        record = dict(state.record)
        record.setdefault("label_updates", 0)
        record["loss"] = state.loss_sum / max(1, state.loss_count)
        record["lr"] = self.config.optim.lr * self._lr_factor(epoch, self.steps_per_epoch - 1)
        record["seconds"] = sum(
            record.get(key, 0.0) for key in ("seconds_extract", "seconds_assign", "seconds_train")
        )
        ordered = {
            "epoch": epoch,
            "loss": record.pop("loss"),
            **{k: v for k, v in record.items() if k != "epoch"},
        }
        state.history.append(ordered)
        state.epoch = epoch + 1
        state.step = 0
        state.loss_sum, state.loss_count = 0.0, 0
        state.record = {}
        if self.procs.is_main:
            self.run_dir.write_metrics(state.history)
            self.resources.write_scalars(ordered, epoch)
        log.info("epoch %d done: %s", epoch, format_stats(ordered))

    def _preempted(self) -> None:
        """Stop on a stop signal (engine/stop.py), with a checkpoint of this step."""
        self.save()
        state = self.state
        signal_name, where = self.stops.received or "a stop signal", str(self.run_dir.root)
        raise Preempted.at_step(signal_name, state.epoch, state.step, where)

    def _plan_budget(self, started: float) -> None:
        """Fit the schedule to `run.max_minutes` (engine/budget.py): make the first labels, time them, a few
        steps, the k-NN monitor and a checkpoint, then set the epochs and epoch size that end within the budget
        (the settings and config.yaml record the plan)."""
        cfg, state, procs = self.config, self.state, self.procs
        if self.resume:  # stopped between its first checkpoint and its plan: the epochs as given
            log.warning("the run stopped before its time budget was planned; it continues with run.epochs")
            return
        began = time.perf_counter()
        self._run_due_updates(0)  # the first labels (every schedule starts with them), and a checkpoint
        update = time.perf_counter() - began
        assert state.labels is not None and self.nets.heads is not None
        step = time_steps(
            self.method,
            self.nets.backbone,
            self.nets.heads,
            self.train_view,
            self.precision,
            self.data.images,
            torch.as_tensor(state.labels),
            self.batch_size // procs.world_size,
            cfg,
        )
        began = time.perf_counter()
        if self.monitor is not None:
            self.monitor.measure(self.nets, self.precision, self.batch_size)
        epoch_end = (
            time.perf_counter()
            - began
            + update
            - state.record.get("seconds_extract", 0.0)
            - state.record.get("seconds_assign", 0.0)
        )
        costs = Costs(spent=time.perf_counter() - started, step=step, update=update, epoch_end=epoch_end)
        plan = None
        if procs.is_main:
            steps_per_pass = max(1, len(self.data.indices) // self.batch_size)
            plan = plan_budget(cfg.run.max_minutes * 60, costs, steps_per_pass, counted_updates(self.method))
        plan = procs.broadcast_object(plan)
        line = describe(plan, cfg.run.max_minutes, costs)
        log.info("time budget: %s", line)
        self.config = cfg = planned_config(cfg, plan, self.batch_size, line)
        self.steps_per_epoch = plan.steps_per_epoch
        self.schedule = self.method.label_update_steps(self.steps_per_epoch, cfg.run.epochs)
        if procs.is_main:
            atomic_write_text(self.run_dir.config, dump_config(cfg))
        self.save()
