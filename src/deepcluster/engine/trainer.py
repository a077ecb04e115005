"""The epoch loop shared by every method: extract, assign, train; checkpoints, exact resume, logs.

One epoch, as data:
    images --cluster view--> backbone [+ heads] --> features --method.assign--> labels
       `--train view--> backbone + head(s) <-- the method's sampler over labels --> loss --> SGD step

Labels are (re)assigned before the global steps the method schedules (DeepCluster: every epoch's start; SeLa:
spread over the run, quadratically); each update is followed by a checkpoint.

Every random draw is either counter-based (a seed derived from the run's seed and the epoch/step it serves) or
comes from the global generators whose states the checkpoint carries, so a resumed run reaches the same weights
and labels as one that never stopped (same seed, same device and thread count).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from deepcluster.config import SMALL_INPUT_LIMIT, ConfigError, TrainConfig, dump_config
from deepcluster.data.decode import DecodedImages, decode_images
from deepcluster.data.sources import ImageSource, open_source
from deepcluster.data.views import ClusterView, TrainView
from deepcluster.engine.checkpoint import (
    atomic_save_numpy,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from deepcluster.engine.device import Precision, images_on_device, resolve_device, resolve_precision
from deepcluster.engine.distributed import Processes, join_processes
from deepcluster.engine.features import all_finite, extract_features
from deepcluster.engine.run_dir import RunDir
from deepcluster.engine.seeding import (
    capture_rng_state,
    derive_seed,
    restore_rng_state,
    seed_everything,
    torch_generator,
)
from deepcluster.evaluate.metrics import ari, nmi
from deepcluster.methods import Assignment, Method, build_method, primary_labels
from deepcluster.models import build_backbone

log = logging.getLogger("deepcluster")

CHECKPOINT_VERSION = 2


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


@dataclass
class RunResult:
    """What a finished run hands back to the caller."""

    run_dir: Path
    labels: np.ndarray
    indices: np.ndarray
    history: list[dict[str, Any]]
    backbone: nn.Module


StepCallback = Callable[["Trainer"], None]


def infer_input_size(source: ImageSource, tries: int = 16) -> int:
    """The images' own shorter side when it is at most 96 px (small-input models), else 224."""
    for index in range(min(tries, len(source))):
        try:
            width, height = source.load(index).size
        except Exception:  # a corrupt first image must not decide anything
            continue
        side = min(width, height)
        return side if side <= SMALL_INPUT_LIMIT else 224
    raise ConfigError(f"--data: none of the first {tries} images of {source.description} could be read")


def default_resize(input_size: int) -> int:
    """Side images are resized to before cropping `input_size`: the input itself for small inputs, else in the
    ImageNet ratio 256 / 224."""
    return input_size if input_size <= SMALL_INPUT_LIMIT else round(input_size * 256 / 224)


def resolve_config(config: TrainConfig, source: ImageSource, device: torch.device) -> TrainConfig:
    """Fill every automatic setting (input size, resize, arch, device, precision) from the data and the machine."""
    data = dataclasses.replace(config.data)
    data.input_size = data.input_size or infer_input_size(source)
    if data.resize is None:
        data.resize = default_resize(data.input_size)
    model = dataclasses.replace(config.model)
    if model.arch is None:
        model.arch = "alexnet_small" if data.input_size <= SMALL_INPUT_LIMIT else "alexnet"
    run = dataclasses.replace(config.run)
    run.device = str(device)
    run.precision = resolve_precision(config.run.precision, device)
    return dataclasses.replace(config, data=data, model=model, run=run)


class Trainer:
    """Runs one configuration end to end, or resumes it from its run directory."""

    def __init__(
        self, config: TrainConfig, resume: bool = False, on_step: StepCallback | None = None
    ) -> None:
        config.validate()
        try:
            device = resolve_device(config.run.device)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        # One process, or one of torchrun's: only the main one writes the run directory.
        self.procs: Processes = join_processes(device, config.run.dist_timeout_minutes)
        device = self.procs.device
        if config.run.out is None:
            stamp = self.procs.broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
            config = dataclasses.replace(
                config, run=dataclasses.replace(config.run, out=f"runs/{config.method}-{stamp}")
            )
        self.run_dir = RunDir(config.run.out)
        if self.procs.is_main:
            self.run_dir.prepare(resume=resume)
        self.procs.barrier()
        self.resume = resume
        self.on_step = on_step
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.source = open_source(
            config.data.data,
            root=config.data.data_root,
            split=config.data.split,
            download=config.data.download,
        )
        self.config = resolve_config(config, self.source, device)
        self.method: Method = build_method(self.config)
        self._check_k(len(self.source))
        if (
            self.procs.distributed
            and self.config.cluster.distributed_kmeans
            and not self.method.shards_assignment
        ):
            raise ConfigError(
                f"cluster.distributed_kmeans: --method {self.config.method} has no distributed assignment; "
                "its features are gathered on the first process (drop --distributed-kmeans)"
            )
        if (
            self.procs.distributed
            and self.config.cluster.distributed_kmeans
            and self.config.cluster.kmeans_sample
        ):
            raise ConfigError(
                "cluster.kmeans_sample trains k-means on a sample of gathered features; with "
                "cluster.distributed_kmeans every process trains on its own shard instead: drop one of the two"
            )
        self.progress = self.config.run.progress and self.procs.is_main
        self.precision = Precision(device, self.config.run.precision)
        self.state = LoopState()
        self._file_log: logging.Handler | None = None
        self._writer: Any = None
        self._cache_path: Path | None = None
        if not resume:
            seed_everything(self.config.run.seed)
        model = self.config.model
        try:
            self.backbone = build_backbone(
                model.arch, sobel=model.sobel, input_size=self.config.data.input_size
            )
        except ValueError as error:
            raise ConfigError(str(error)) from error
        if self.procs.rank > 0 and not resume:  # same initial weights everywhere, own dropout draws
            seed_everything(derive_seed(self.config.run.seed, "rank", self.procs.rank))

    def _check_k(self, n_images: int) -> None:
        k = self.config.cluster.k
        if self.method.uses_k and k > n_images:
            raise ConfigError(
                f"--k {k} is larger than the number of images ({n_images}); use --k {n_images} or less"
            )

    # ---------------------------------------------------------------- set-up
    def _setup(self) -> None:
        cfg = self.config
        procs = self.procs
        if procs.is_main:
            self._file_log = logging.FileHandler(self.run_dir.log_file)
            self._file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(self._file_log)
            if log.level == logging.NOTSET or log.level > logging.INFO:
                log.setLevel(logging.INFO)
        else:  # the main process speaks for all
            log.setLevel(logging.WARNING)
        log.info("data: %s", self.source.description)
        if procs.distributed:
            log.info(
                "%d processes (%s), this is rank %d of node %d",
                procs.world_size,
                "NCCL" if procs.device.type == "cuda" else "gloo",
                procs.rank,
                procs.node,
            )
        self.decoded: DecodedImages = self._decode()
        if self.decoded.skipped and procs.is_main:
            self.run_dir.write_skipped(self.decoded.skipped)
            log.warning(
                "%d image(s) could not be read and were skipped; see %s",
                len(self.decoded.skipped),
                self.run_dir.skipped,
            )
        n_images = self.decoded.images.shape[0]
        self.images = images_on_device(self.decoded.images, self.precision.device)
        self._check_k(n_images)
        true = self.source.labels
        self.true_labels = None if true is None else np.asarray(true)[self.decoded.indices]
        if procs.is_main:
            atomic_write_text(self.run_dir.config, dump_config(cfg))
        self.backbone.to(self.precision.device)
        if self.precision.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.train_backbone: nn.Module = self._parallel(self.backbone, every_parameter_used=True)
        self.optimizer = torch.optim.SGD(
            self.backbone.trainable_parameters(),
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )
        self.heads: nn.Module | None = None
        self.head_optimizer: torch.optim.Optimizer | None = None
        self.cluster_view = ClusterView(cfg.data.input_size, cfg.data.mean, cfg.data.std)
        aug = cfg.augment
        self.train_view = TrainView(
            cfg.data.input_size,
            cfg.data.mean,
            cfg.data.std,
            scale=aug.crop_scale,
            ratio=aug.crop_ratio,
            flip=aug.flip,
            color_jitter=aug.color_jitter,
            grayscale_prob=aug.grayscale_prob,
        )
        self.epoch_size = cfg.optim.epoch_size or n_images
        self.batch_size = min(cfg.optim.batch_size, self.epoch_size)
        if self.batch_size % procs.world_size:
            raise ConfigError(
                f"--batch-size {self.batch_size} (the total over all processes) is not a multiple of the "
                f"{procs.world_size} processes; choose a multiple of {procs.world_size}"
            )
        self.steps_per_epoch = max(1, self.epoch_size // self.batch_size)
        self.schedule = self.method.label_update_steps(self.steps_per_epoch, cfg.run.epochs)
        if self.resume:
            self._load()
        if procs.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir.tensorboard), purge_step=self.state.epoch or None)
        log.info(
            "run %s: %s on %d images, arch %s at %d px, k=%d, %s/%s, %d steps/epoch",
            self.run_dir.root,
            cfg.method,
            n_images,
            cfg.model.arch,
            cfg.data.input_size,
            cfg.cluster.k,
            self.precision.device,
            self.precision.name,
            self.steps_per_epoch,
        )

    def _decode(self) -> DecodedImages:
        """Decode the data set once: in this process, or, under torchrun, once per machine by its first process
        into a memory-mapped file that the machine's other processes map (one copy in the page cache)."""
        cfg, procs = self.config, self.procs
        decode = lambda cache_file: decode_images(  # noqa: E731
            self.source,
            cfg.data.resize,
            num_threads=cfg.data.decode_threads,
            progress=self.progress,
            log=log,
            inner_size=cfg.data.input_size,
            cache_file=cache_file,
        )
        if not procs.distributed:
            self._cache_path = self._cache_file(len(self.source))
            return decode(self._cache_path)
        path = self._cache_folder() / f"decoded-{self.run_dir.root.name}-node{procs.node}.npy"
        decoded = decode(path) if procs.local_rank == 0 else None
        if decoded is not None:
            self._cache_path = path
        kept = procs.all_gather_object(None if decoded is None else (decoded.indices, decoded.skipped))
        indices, skipped = kept[0]
        if decoded is not None:
            if not np.array_equal(decoded.indices, indices):
                raise ConfigError(
                    f"--data {cfg.data.data}: node {procs.node} could read other images than node 0; "
                    "every machine must see the same files"
                )
            return decoded
        mapped = np.load(path, mmap_mode="c")  # copy-on-write: never written, shared with the decoder's pages
        images = torch.from_numpy(mapped[: len(indices)])
        return DecodedImages(images=images, indices=indices, skipped=skipped, size=int(cfg.data.resize or 0))

    def _parallel(self, module: nn.Module, every_parameter_used: bool) -> nn.Module:
        """`module` itself in one process; wrapped in DistributedDataParallel (gradients averaged over the
        processes, the main process's weights broadcast first) under torchrun."""
        if not self.procs.distributed:
            return module
        device = self.procs.device
        return DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not every_parameter_used,
        )

    def _cache_folder(self) -> Path:
        data = self.config.data
        return Path(data.cache_dir) if data.cache_dir else self.run_dir.root / "cache"

    def _spill_file(self, stem: str, what: str, n_bytes: int) -> Path | None:
        """Where an array of `n_bytes` (`what`, for the log) goes when it exceeds data.memory_limit_gb: the cache
        folder's `<stem>-<run>.npy`; None: it stays in RAM."""
        limit = self.config.data.memory_limit_gb
        if n_bytes <= limit * 1e9:
            return None
        path = self._cache_folder() / f"{stem}-{self.run_dir.root.name}.npy"
        log.info(
            "%s (%.1f GB) exceed data.memory_limit_gb=%g: memory-mapped %s", what, n_bytes / 1e9, limit, path
        )
        return path

    def _allocate_features(self, n: int, d: int) -> np.ndarray:
        """Room for N x D float32 extracted values: in RAM up to data.memory_limit_gb, else a memory-mapped file
        in the cache folder (removed after the assignment)."""
        path = self._spill_file("features", "extracted values", n * d * 4)
        if path is None:
            return np.empty((n, d), dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))

    def _cache_file(self, n_images: int) -> Path | None:
        """Where the decoded images go when they exceed data.memory_limit_gb; None: they stay in RAM."""
        size = int(self.config.data.resize or 0)
        return self._spill_file("decoded", "decoded images", n_images * 3 * size * size)

    def _teardown(self) -> None:
        # A mapped file can be unlinked on POSIX: its pages stay valid while in use.
        if self._cache_path is not None:
            self._cache_path.unlink(missing_ok=True)
            if not self.config.data.cache_dir:
                with contextlib.suppress(OSError):  # the run's own cache folder, once empty
                    self._cache_path.parent.rmdir()
        self.procs.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._file_log is not None:
            log.removeHandler(self._file_log)
            self._file_log.close()
            self._file_log = None

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint_state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        state = self.state
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "arch": self.config.model.arch,
            "model": self.backbone.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "heads": None if self.heads is None else self.heads.state_dict(),
            "head_optimizer": None if self.head_optimizer is None else self.head_optimizer.state_dict(),
            "n_classes": None if self.heads is None else self._n_classes,
            "loop": {
                "epoch": state.epoch,
                "step": state.step,
                "updates_done": state.updates_done,
                "labels": state.labels,
                "prev_labels": state.prev_labels,
                "history": state.history,
                "record": state.record,
                "loss_sum": state.loss_sum,
                "loss_count": state.loss_count,
            },
            "indices": self.decoded.indices,
            "rng": rng[0],
            "rng_ranks": rng,
        }

    def save(self) -> None:
        """Write checkpoints/last.pt atomically; refuse (and stop the run) if the weights are no longer finite."""
        modules = [("backbone", self.backbone)] + ([("head", self.heads)] if self.heads is not None else [])
        for owner, module in modules:
            for name, param in module.named_parameters():
                if not bool(torch.isfinite(param).all()):
                    self._diverged(f"{owner} weight {name} became NaN or infinite")
        rng = self.procs.all_gather_object(
            capture_rng_state()
        )  # every process's generators, for exact resume
        if self.procs.is_main:
            save_checkpoint(self.run_dir.checkpoint, self._checkpoint_state(rng))

    def _diverged(self, what: str) -> None:
        raise TrainingDiverged(
            f"{what} at epoch {self.state.epoch}, step {self.state.step}; the last good checkpoint is "
            f"{self.run_dir.checkpoint}. Lower --lr (now {self.config.optim.lr}) and start again, or resume "
            "with a lower rate."
        )

    def _load(self) -> None:
        path = self.run_dir.checkpoint
        if not path.exists():
            raise ConfigError(f"--resume {self.run_dir.root}: no checkpoint at {path}")
        ckpt = load_checkpoint(path)
        if not np.array_equal(ckpt["indices"], self.decoded.indices):
            raise ConfigError(f"--resume {self.run_dir.root}: the images readable now differ from the run's")
        self.backbone.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        loop = dict(ckpt["loop"])
        if ckpt.get("version", 1) < 2:  # v1 kept the epoch of the last clustering instead of an update count
            step = loop["epoch"] * self.steps_per_epoch + loop["step"]
            done_now = loop.pop("labels_epoch") >= loop["epoch"]
            loop["updates_done"] = sum(1 for s in self.schedule if s < step or (s == step and done_now))
        self.state = LoopState(**loop)
        if ckpt["heads"] is not None:
            assignment = Assignment(labels=loop["labels"], n_classes=ckpt["n_classes"])
            self._new_heads(assignment, epoch=loop["epoch"])
            self.heads.load_state_dict(ckpt["heads"])
            self.head_optimizer.load_state_dict(ckpt["head_optimizer"])
        rng = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(rng) == self.procs.world_size:
            restore_rng_state(rng[self.procs.rank])
        else:
            log.warning(
                "the run was saved by %d process(es) and resumes on %d: random draws of dropout differ from an "
                "unbroken run (everything else is seeded by step)",
                len(rng),
                self.procs.world_size,
            )
            seed_everything(derive_seed(self.config.run.seed, "resume", self.procs.rank, self.state.step))
        if self.procs.is_main:
            self.run_dir.write_metrics(self.state.history)
        log.info("resumed %s at epoch %d, step %d", self.run_dir.root, self.state.epoch, self.state.step)

    # ---------------------------------------------------------------- phases
    def _new_heads(self, assignment: Assignment, epoch: int) -> None:
        generator = torch_generator(derive_seed(self.config.run.seed, "heads", epoch))
        heads = self.method.build_heads(self.backbone.feature_dim, assignment, generator)
        self.heads = heads.to(self.precision.device)
        self.train_heads = None  # unhook the previous heads' wrapper before wrapping the new ones
        self.train_heads = self._parallel(self.heads, self.method.uses_every_head_parameter)
        self._n_classes = assignment.n_classes
        optim = self.config.optim
        self.head_optimizer = torch.optim.SGD(
            self.heads.parameters(),
            lr=optim.head_lr or optim.lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
        )

    def _run_due_updates(self, epoch: int) -> bool:
        """Assign labels if the schedule has an update due at (or, after a resume, before) the current step.

        Several due updates collapse into one. Each update is followed by a checkpoint. Returns True if one ran.
        """
        state = self.state
        due = bisect.bisect_right(self.schedule, epoch * self.steps_per_epoch + state.step)
        if due <= state.updates_done:
            return False
        self._update_labels(epoch)
        state.updates_done = due
        self.save()
        return True

    def _update_labels(self, epoch: int) -> None:
        """Assign labels (given ones, or extracted and assigned by the method), log their quality, set up heads."""
        cfg = self.config
        state = self.state
        started = time.perf_counter()
        assignment = None
        if state.labels is None:
            assignment = self.method.initial_assignment(
                self.decoded.indices, self.source.name, derive_seed(cfg.run.seed, "initial")
            )
        extracted = started
        if assignment is None:
            shard = self._extract(epoch)
            extracted = time.perf_counter()
            # Seeds of epoch-start updates are those of the single-update engine, so older runs reproduce.
            key = (epoch,) if state.step == 0 else (epoch, state.step)
            assignment = self._assign(shard, seed=derive_seed(cfg.run.seed, "assign", *key))
        assigned = time.perf_counter()
        state.prev_labels = state.labels
        state.labels = assignment.labels
        record = state.record
        record.update(assignment.stats)
        if self.procs.is_main:  # only the main process's history is written
            record.update(_label_metrics(state.prev_labels, state.labels, self.true_labels))
        record["label_updates"] = record.get("label_updates", 0) + 1
        record["seconds_extract"] = record.get("seconds_extract", 0.0) + extracted - started
        record["seconds_assign"] = record.get("seconds_assign", 0.0) + assigned - extracted
        if self.procs.is_main:
            self.run_dir.write_epoch_labels(epoch, assignment.labels)
        if self.heads is None or self.method.fresh_heads:
            self._new_heads(assignment, epoch)
        log.info("epoch %d step %d: labels assigned (%s)", epoch, state.step, _format_stats(record))

    def _assign(self, shard: np.ndarray, seed: int) -> Assignment:
        """Labels of every image from this process's extracted rows: the method's assignment on the gathered
        values (computed by the main process and broadcast), or its distributed assignment on the shards."""
        cfg, procs = self.config, self.procs
        n = self.images.shape[0]
        sharded = procs.distributed and cfg.cluster.distributed_kmeans
        features = None
        if not sharded or cfg.run.save_features:
            features = procs.gather_rows(shard, n, self._allocate_features)
        assignment = None
        if sharded:
            assignment = self.method.assign_sharded(shard, seed, procs)
        elif features is not None:  # the main process (or the only one)
            assignment = self.method.assign(features, seed)
        if features is not None and cfg.run.save_features:
            atomic_save_numpy(self.run_dir.features, features)
        spilled = {Path(a.filename) for a in (features, shard) if isinstance(a, np.memmap)}
        del features, shard
        for path in spilled:  # a spilled file is removed as soon as it has served
            path.unlink(missing_ok=True)
        if procs.distributed and not sharded:
            labels = procs.broadcast_array(None if assignment is None else assignment.labels)
            summary = procs.broadcast_object(
                None if assignment is None else (assignment.n_classes, assignment.stats)
            )
            assignment = assignment or Assignment(labels=labels, n_classes=summary[0], stats=summary[1])
        assert assignment is not None
        return assignment

    def _extract(self, epoch: int) -> np.ndarray:
        """The method's per-image values over this process's rows (all rows in one process), in eval mode, on
        the method's view."""
        cfg, procs = self.config, self.procs
        # Every shard is seen with the main process's batch-norm statistics (those the checkpoint keeps).
        procs.broadcast_buffers(self.backbone)
        self.backbone.eval()
        if self.heads is not None:
            self.heads.eval()
        view: Callable[[torch.Tensor], torch.Tensor] = self.cluster_view
        if self.method.extract_view == "train":
            key = (epoch, self.state.step) + ((procs.rank,) if procs.distributed else ())
            generator = torch_generator(derive_seed(cfg.run.seed, "extract-view", *key))
            view = lambda batch: self.train_view(batch, generator)  # noqa: E731
        start, stop = procs.shard(self.images.shape[0])
        features = extract_features(
            lambda x: self.method.extract(self.backbone, self.heads, x),
            self.images[start:stop],
            view,
            batch_size=cfg.optim.batch_size,
            precision=self.precision,
            progress=self.progress,
            desc=f"epoch {epoch} features",
            allocate=self._allocate_features if not procs.distributed else None,
        )
        if not all_finite(features):
            self._diverged("the clustering features became NaN or infinite")
        return features

    def _lr_factor(self, epoch: int, step: int) -> float:
        optim = self.config.optim
        if optim.schedule == "constant":
            return 1.0
        total = self.config.run.epochs * self.steps_per_epoch
        progress = (epoch * self.steps_per_epoch + step) / max(1, total)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _set_lr(self, factor: float) -> None:
        optim = self.config.optim
        for group in self.optimizer.param_groups:
            group["lr"] = optim.lr * factor
        if self.head_optimizer is not None:
            for group in self.head_optimizer.param_groups:
                group["lr"] = (optim.head_lr or optim.lr) * factor

    def _train_epoch(self, epoch: int) -> None:
        cfg = self.config
        state = self.state
        self._run_due_updates(epoch)
        if state.labels is None or self.heads is None or self.head_optimizer is None:
            raise RuntimeError(f"method {self.method.name} scheduled no label assignment before step 0")
        indices = self.method.sample(
            state.labels,
            self.steps_per_epoch * self.batch_size,
            seed=derive_seed(cfg.run.seed, "sampler", epoch),
        )
        labels = torch.as_tensor(state.labels)
        self.backbone.train()
        self.heads.train()
        device = self.precision.device
        updating = 0.0  # seconds of label updates inside the loop, not counted as training
        started = time.perf_counter()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=state.step,
            desc=f"epoch {epoch} train",
            unit="batch",
            disable=not self.progress,
            leave=False,
        )
        procs = self.procs
        while state.step < self.steps_per_epoch:
            began = time.perf_counter()
            if self._run_due_updates(epoch):
                labels = torch.as_tensor(state.labels)
                self.backbone.train()
                self.heads.train()
                updating += time.perf_counter() - began
            step = state.step
            # This process's part of the step's batch: the processes' parts together are the whole batch.
            batch = torch.as_tensor(indices[procs.batch_part(step, self.batch_size)])
            key = (epoch, step) + ((procs.rank,) if procs.distributed else ())
            generator = torch_generator(derive_seed(cfg.run.seed, "augment", *key))
            x = self.train_view(
                self.images[batch.to(self.images.device)].to(device, non_blocking=True), generator
            )
            x, targets = self.method.prepare_batch(x, labels[batch].to(device, non_blocking=True), generator)
            if self.precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self._set_lr(self._lr_factor(epoch, step))
            with self.precision.autocast():
                outputs = self.method.head_outputs(self.train_heads, self.train_backbone(x), targets)
            loss = self.method.loss(outputs, targets)
            value = procs.mean(float(loss.detach()))
            if not math.isfinite(value):
                self._diverged(f"the training loss became {value}")
            self.optimizer.zero_grad(set_to_none=True)
            self.head_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.head_optimizer.step()
            state.loss_sum += value
            state.loss_count += 1
            state.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
            if (
                cfg.run.checkpoint_every
                and state.step % cfg.run.checkpoint_every == 0
                and state.step < self.steps_per_epoch
            ):
                self.save()
            if self.on_step is not None:
                self.on_step(self)
        bar.close()
        spent = time.perf_counter() - started - updating
        if (
            epoch == cfg.run.epochs - 1
        ):  # an update scheduled after the last step: the trained network's labels
            self._run_due_updates(epoch)
        state.record["seconds_train"] = state.record.get("seconds_train", 0.0) + spent

    def _finish_epoch(self, epoch: int) -> None:
        state = self.state
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
            for key, value in ordered.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self._writer.add_scalar(f"epoch/{key}", value, epoch)
            self._writer.flush()
        log.info("epoch %d done: %s", epoch, _format_stats(ordered))

    # ---------------------------------------------------------------- the run
    def _build_report(self) -> None:
        """The run's HTML report; a failure is logged with the command that rebuilds it, never fatal."""
        from deepcluster.report.build import build_report

        started = time.perf_counter()
        try:
            page = build_report(self.run_dir.root)
        except Exception as error:  # the run itself is complete: keep it, say how to retry
            log.warning(
                "the report could not be built (%s: %s); rebuild it with: deepcluster report %s",
                type(error).__name__,
                error,
                self.run_dir.root,
            )
            return
        log.info("report: %s (%.0f s)", page, time.perf_counter() - started)

    def _out_of_time(self, started: float) -> bool:
        """True when `run.max_minutes` is set and one more epoch (as long as the last) would overrun it (the
        main process's clock decides for all)."""
        budget = self.config.run.max_minutes
        if budget is None or self.state.step > 0:
            return False
        projected = time.perf_counter() - started + _epoch_seconds(self.state.history)
        if self.procs.broadcast_object(projected <= budget * 60):
            return False
        log.info(
            "stopping before epoch %d: the next epoch would end past %.1f minutes", self.state.epoch, budget
        )
        return True

    def fit(self) -> RunResult:
        """Run (or continue) every epoch, then write labels.csv; returns labels and the trained backbone."""
        try:
            self._setup()
            cfg = self.config
            started = time.perf_counter()
            for epoch in range(self.state.epoch, cfg.run.epochs):
                if self._out_of_time(started):
                    break
                self._train_epoch(epoch)
                self._finish_epoch(epoch)
                self.save()
            assert self.state.labels is not None
            if self.procs.is_main:
                names = [self.source.name(int(i)) for i in self.decoded.indices]
                self.run_dir.write_labels_csv(
                    self.decoded.indices, names, self.state.labels, self.true_labels
                )
                if cfg.run.report:
                    self._build_report()
            log.info("finished: %s", json.dumps(self.state.history[-1]) if self.state.history else "no epoch")
            return RunResult(
                self.run_dir.root, self.state.labels, self.decoded.indices, self.state.history, self.backbone
            )
        finally:
            self._teardown()


def _label_metrics(
    previous: np.ndarray | None, labels: np.ndarray, true: np.ndarray | None
) -> dict[str, Any]:
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


def _epoch_seconds(history: list[dict[str, Any]]) -> float:
    return float(history[-1].get("seconds", 0.0)) if history else 0.0


def _format_stats(record: dict[str, Any]) -> str:
    parts = []
    for key, value in record.items():
        if key == "epoch" or value is None or isinstance(value, list):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


def train(config: TrainConfig, on_step: StepCallback | None = None) -> RunResult:
    """Train `config` from scratch into `config.run.out`."""
    return Trainer(config, resume=False, on_step=on_step).fit()


def resume(
    run_dir: str | Path, epochs: int | None = None, on_step: StepCallback | None = None, **run_overrides: Any
) -> RunResult:
    """Continue the run saved in `run_dir` (optionally for more epochs) to the same result as an unbroken run."""
    from deepcluster.config import load_config

    run = RunDir(run_dir)
    if not run.config.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a run directory?")
    config = load_config(run.config)
    config.run.out = str(run_dir)
    if epochs is not None:
        config.run.epochs = epochs
    for key, value in run_overrides.items():
        if not hasattr(config.run, key):
            raise ConfigError(f"--resume: option run.{key} cannot be changed when resuming")
        setattr(config.run, key, value)
    return Trainer(config, resume=True, on_step=on_step).fit()
