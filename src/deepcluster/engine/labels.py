"""The label phase: per-image values extracted by the network (sharded over the processes), labels assigned by
the method (on gathered values, or on the shards), their quality measured, fresh heads built."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepcluster.cluster.metrics import ari, nmi
from deepcluster.config import TrainConfig
from deepcluster.data.views import ClusterView
from deepcluster.engine.device import Precision
from deepcluster.engine.distributed import Processes
from deepcluster.engine.features import all_finite, extract_features
from deepcluster.engine.networks import Networks
from deepcluster.engine.resources import RunImages, RunResources
from deepcluster.engine.state import LoopState
from deepcluster.methods import Assignment, ExtractingMethod, Method, primary_labels
from deepcluster.methods.base import View
from deepcluster.seeding import derive_seed, torch_generator
from deepcluster.storage import atomic_save_numpy

log = logging.getLogger("deepcluster")


class LabelPhase:
    """Assigns every image's labels when the loop asks for it."""

    def __init__(
        self,
        config: TrainConfig,
        method: Method,
        nets: Networks,
        resources: RunResources,
        data: RunImages,
        precision: Precision,
        views: tuple[ClusterView, View],
        progress: bool,
        diverged: Callable[[str], None],
    ) -> None:
        self.config, self.method, self.nets, self.resources = config, method, nets, resources
        self.procs: Processes = resources.procs
        self.data = data
        self.images = data.images
        self.precision, self.progress, self.diverged = precision, progress, diverged
        self.cluster_view, self.train_view = views

    def update(self, state: LoopState, epoch: int, last: bool = False) -> None:
        """Assign labels (given ones, or extracted and assigned by the method), log their quality, set up heads."""
        cfg = self.config
        started = time.perf_counter()
        assignment = None
        if state.labels is None:
            assignment = self.method.initial_assignment(
                self.data.indices, self.data.name_of, derive_seed(cfg.run.seed, "initial")
            )
        extracted = started
        # Seeds of epoch-start updates are those of the single-update engine, so older runs reproduce.
        key = (epoch,) if state.step == 0 else (epoch, state.step)
        seed = derive_seed(cfg.run.seed, "assign", *key)
        if assignment is None and state.labels is not None:
            assignment = self._stored(seed, last)
        if assignment is None:
            if self.nets.heads is None:
                self.nets.first_heads(epoch)
            shard = self._extract(state, epoch)
            extracted = time.perf_counter()
            assignment = self._assign(shard, seed=seed)
        assigned = time.perf_counter()
        state.prev_labels = state.labels
        state.labels = assignment.labels
        record = state.record
        record.update(assignment.stats)
        if self.procs.is_main:  # only the main process's history is written
            record.update(label_metrics(state.prev_labels, state.labels, self.data.true_labels))
        record["label_updates"] = record.get("label_updates", 0) + 1
        record["seconds_extract"] = record.get("seconds_extract", 0.0) + extracted - started
        record["seconds_assign"] = record.get("seconds_assign", 0.0) + assigned - extracted
        if self.procs.is_main:
            self.resources.run_dir.write_epoch_labels(epoch, assignment.labels)
        if self.nets.heads is None or not self.method.keep_heads(self.nets.heads, assignment):
            self.nets.new_heads(assignment, epoch)
        log.info("epoch %d step %d: labels assigned (%s)", epoch, state.step, format_stats(record))

    def final_assignment(self, state: LoopState) -> Assignment | None:
        """The run's final assignment, of the network as it stands at the end (or where the time budget stopped
        it), for labels.csv and RUN/assigner.pt only: its labels are the method's `predict` rule, which then
        puts new images into the same clusters. The loop state is left as it is, so that a resume for more
        epochs continues the unbroken run. None for a method whose labels are given."""
        if not isinstance(self.method, ExtractingMethod):
            return None
        seed = derive_seed(self.config.run.seed, "assign", "final", state.epoch)
        assignment = self._stored(seed, last=True)  # v2 with final_labels=bank: the bank, no pass
        if assignment is None:
            assignment = self._assign(self._extract(state, state.epoch), seed=seed, last=True)
        if self.procs.is_main and self.data.true_labels is not None:
            log.info(
                "labels.csv from the trained network after %d epoch(s): %s",
                state.epoch,
                format_stats(label_metrics(state.labels, assignment.labels, self.data.true_labels)),
            )
        return assignment

    def _method(self) -> ExtractingMethod:
        if not isinstance(self.method, ExtractingMethod):
            raise RuntimeError(f"method {self.method.name} gives its labels once and cannot assign new ones")
        return self.method

    def _stored(self, seed: int, last: bool) -> Assignment | None:
        """Labels from what the method stored while training (its bank), made by the main process (which holds
        the gathered bank) and broadcast; None on every process when there is nothing stored."""
        method, procs = self._method(), self.procs
        assignment = method.assign_stored(self.nets.heads, seed, last) if procs.is_main else None
        return procs.broadcast_object(assignment)

    def _extract(self, state: LoopState, epoch: int) -> np.ndarray:
        """The method's per-image values over this process's rows (all rows in one process), in eval mode, on
        the method's view."""
        cfg, procs, method = self.config, self.procs, self._method()
        # Every shard is seen with the main process's batch-norm statistics (those the checkpoint keeps).
        procs.broadcast_buffers(self.nets.backbone)
        self.nets.eval()
        key = (epoch, state.step) + ((procs.rank,) if procs.distributed else ())
        generator = torch_generator(derive_seed(cfg.run.seed, "extract-view", *key))
        view = method.extract_view(self.cluster_view, self.train_view, generator)
        start, stop = procs.shard(self.images.shape[0])
        features = extract_features(
            lambda x: method.extract(self.nets.backbone, self.nets.heads, x),
            self.images[start:stop],
            view,
            batch_size=cfg.optim.batch_size,
            precision=self.precision,
            progress=self.progress,
            desc=f"epoch {epoch} features",
            allocate=self.resources.allocate_features if not procs.distributed else None,
        )
        if not all_finite(features):
            self.diverged("the clustering features became NaN or infinite")
        return features

    def _assign(self, shard: np.ndarray, seed: int, last: bool = False) -> Assignment:
        """Labels of every image from this process's extracted rows: the method's assignment on the gathered
        values (computed by the main process and broadcast), or its distributed assignment on the shards. The
        `last` update's labels are the method's `predict` rule on the gathered values (`ExtractingMethod.final`),
        so that assigning the same images later gives them again."""
        cfg, procs, method = self.config, self.procs, self._method()
        n = self.images.shape[0]
        sharded = procs.distributed and cfg.cluster.distributed_kmeans
        features = None
        if not sharded or cfg.run.save_features or last:
            features = procs.gather_rows(shard, n, self.resources.allocate_features)
        assignment = None
        if sharded:
            assignment = method.assign_sharded(shard, seed, procs)
        elif features is not None:  # the main process (or the only one)
            assignment = method.assign(features, self.nets.heads, seed)
        if last and features is not None and assignment is not None:
            assignment = method.final(features, assignment)
        if features is not None and cfg.run.save_features:
            atomic_save_numpy(self.resources.run_dir.features, features)
        spilled = {Path(a.filename) for a in (features, shard) if isinstance(a, np.memmap)}
        del features, shard
        for path in spilled:  # a spilled file is removed as soon as it has served
            path.unlink(missing_ok=True)
        if procs.distributed and (not sharded or last):  # the main process's labels (the final ones) for all
            mine = assignment if procs.is_main else None
            labels = procs.broadcast_array(None if mine is None else mine.labels)
            summary = procs.broadcast_object(
                None if mine is None else (mine.n_classes, mine.stats, mine.state)
            )
            assignment = Assignment(labels, n_classes=summary[0], stats=summary[1], state=summary[2])
        assert assignment is not None
        return assignment


def label_metrics(previous: np.ndarray | None, labels: np.ndarray, true: np.ndarray | None) -> dict[str, Any]:
    """NMI to the previous labels (mean over heads, and per head when there are several), and NMI / ARI of the
    first head to the truth when known."""
    record: dict[str, Any] = {"n_clusters": int(np.unique(primary_labels(labels)).size)}
    columns = labels.reshape(len(labels), -1)
    if previous is None or previous.shape != labels.shape:
        record["nmi_prev"] = None
    else:
        before = previous.reshape(len(previous), -1)
        per_head = [nmi(before[:, h], columns[:, h]) for h in range(columns.shape[1])]
        record["nmi_prev"] = float(np.mean(per_head))
        if len(per_head) > 1:
            record["nmi_prev_heads"] = per_head
    if true is None:
        record["nmi_true"] = record["ari_true"] = None
    else:
        record["nmi_true"] = nmi(true, columns[:, 0])
        record["ari_true"] = ari(true, columns[:, 0])
        if columns.shape[1] > 1:
            record["nmi_true_heads"] = [nmi(true, columns[:, h]) for h in range(columns.shape[1])]
    return record


def format_stats(record: dict[str, Any]) -> str:
    """`key=value, ...` of a record's numbers and strings, for the log."""
    parts = []
    for key, value in record.items():
        if key == "epoch" or value is None or isinstance(value, list):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)
