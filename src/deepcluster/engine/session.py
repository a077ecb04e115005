"""A run's set-up, checkpoints and resume: everything the epoch loop (`loop.py`) stands on.

Built from a config, a `Session` checks every setting it can before touching the data (options, device, method,
data size); `setup` then joins the processes, prepares the run directory, builds the backbone, decodes the
images and, on a resume, puts the last checkpoint back.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from deepcluster.config import ConfigError, TrainConfig, dump_config
from deepcluster.data.sources import open_source
from deepcluster.data.views import ClusterView
from deepcluster.engine.conv_kernels import resolve_cpu_conv
from deepcluster.engine.device import Precision, images_on_device
from deepcluster.engine.distributed import Processes
from deepcluster.engine.labels import LabelPhase
from deepcluster.engine.monitor import KnnMonitor
from deepcluster.engine.networks import Networks, first_conv_from_data, new_backbone
from deepcluster.engine.resources import RunImages, RunResources
from deepcluster.engine.setup import (
    fit_data_size,
    refuse_before_data,
    refuse_clustering,
    resolve_config,
    run_device,
)
from deepcluster.engine.state import LoopState, TrainingDiverged, checkpoint_state, loop_state, rng_states
from deepcluster.methods import MethodRegistry
from deepcluster.models import check_arch
from deepcluster.seeding import (
    capture_rng_state,
    derive_seed,
    restore_rng_state,
    seed_everything,
    torch_generator,
)
from deepcluster.storage import NoCheckpoint, RunDir, atomic_write_text

log = logging.getLogger("deepcluster")


class Session:
    """One run's settings, method, resources, networks and loop state."""

    def __init__(
        self, config: TrainConfig, resume: bool, methods: MethodRegistry, trust_checkpoint: bool = False
    ) -> None:
        """Check every setting that can be checked before touching the data (options, device, method, the
        source's size); nothing is written yet."""
        self.asked = config = methods.complete(config)
        """The settings as given (request.yaml: what `--auto-resume` compares a new command with)."""
        self.method_class = methods[config.method]
        config.validate()
        refuse_clustering(config, self.method_class, methods)
        check_arch(config.model.arch)
        device = run_device(config)
        self.restarted = bool(resume and config.run.out and not RunDir(config.run.out).has_checkpoint())
        """A resume of a run stopped before its first checkpoint, which therefore starts from the beginning."""
        self.resume = resume and not self.restarted
        self.trust_checkpoint = trust_checkpoint
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        data = config.data
        self.source = open_source(data.data, root=data.data_root, split=data.split, download=data.download)
        self.request = resolve_config(config, self.source, device, self.method_class)
        """The settings as asked for, with the machine's and the source's automatic ones filled in; `setup`
        fits them to the decoded data into `config`."""
        refuse_before_data(self.request, self.method_class, len(self.source))
        self.precision = Precision(device, self.request.run.precision)
        self.resources = RunResources(self.request.data, device, self.resume)
        self.state = LoopState()
        self.progress = False

    # ------------------------------------------------------------------ views of the parts
    @property
    def procs(self) -> Processes:
        return self.resources.procs

    @property
    def run_dir(self) -> RunDir:
        assert self.resources.run_dir is not None, "setup() has not run"
        return self.resources.run_dir

    @property
    def backbone(self) -> nn.Module:
        return self.nets.backbone

    @property
    def train_backbone(self) -> nn.Module:
        return self.nets.train_backbone

    @property
    def heads(self) -> nn.Module | None:
        return self.nets.heads

    @property
    def train_heads(self) -> nn.Module | None:
        return self.nets.train_heads

    def seed(self, *key: int | str) -> int:
        """A seed of the run for `key` (the same on every process)."""
        return derive_seed(self.request.run.seed, *key)

    def generator(self, name: str, *key: int) -> torch.Generator:
        """A generator for `name` at `key`, with this process's own stream under torchrun."""
        ranked = key + ((self.procs.rank,) if self.procs.distributed else ())
        return torch_generator(self.seed(name, *ranked))

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Join, prepare, build, decode, fit the settings to the data (`config`, once), and on a resume load the
        last checkpoint."""
        request = self.resources.open(self.request, self.asked)
        if self.restarted:
            log.warning(
                "--resume %s: the run stopped before its first checkpoint; starting it from the beginning with "
                "its config.yaml",
                request.run.out,
            )
        procs, device = self.procs, self.precision.device  # config.yaml is there (written by open)
        self.progress = request.run.progress and procs.is_main
        if not self.resume:
            seed_everything(request.run.seed)
        backbone = new_backbone(request)
        if procs.rank > 0 and not self.resume:  # same initial weights everywhere, own dropout draws
            seed_everything(self.seed("rank", procs.rank))
        log.info("data: %s", self.source.description)
        if procs.distributed:
            backend = "NCCL" if procs.device.type == "cuda" else "gloo"
            log.info(
                "%d processes (%s), this is rank %d of node %d",
                procs.world_size,
                backend,
                procs.rank,
                procs.node,
            )
        decoded = self.resources.decode(self.source, self.progress)
        if decoded.skipped and procs.is_main:
            self.run_dir.write_skipped(decoded.skipped)
            log.warning(
                "%d image(s) could not be read and were skipped; see %s",
                len(decoded.skipped),
                self.run_dir.skipped,
            )
        n_images = decoded.images.shape[0]
        fitted = fit_data_size(request, self.method_class, n_images, backbone.feature_dim)
        self.config = cfg = resolve_cpu_conv(fitted, backbone, procs, self.precision)
        """The run's settings, final: what config.yaml records and every part of the run is built with."""
        self.method = self.method_class(cfg, device)
        true = self.source.labels
        self.data = RunImages(
            images=images_on_device(decoded.images, device),
            indices=decoded.indices,
            name_of=self.source.name,
            true_labels=None if true is None else np.asarray(true)[decoded.indices],
        )
        if procs.is_main:
            atomic_write_text(self.run_dir.config, dump_config(cfg))
        self.cluster_view = ClusterView(cfg.data.input_size, cfg.data.mean, cfg.data.std)
        first_conv_from_data(
            backbone,
            self.data.images,
            self.cluster_view,
            cfg.model.first_conv,
            self.seed("first-conv"),
            fresh=not self.resume,
        )
        self.nets = Networks(cfg, self.method, backbone, procs, device)
        self.train_view = self.method.train_view()
        epoch_size = cfg.optim.epoch_size or n_images
        self.batch_size = min(cfg.optim.batch_size, epoch_size)
        if self.batch_size % procs.world_size:
            raise ConfigError(
                f"--batch-size {self.batch_size} (the total over all processes) is not a multiple of the "
                f"{procs.world_size} processes; choose a multiple of {procs.world_size}"
            )
        self.steps_per_epoch = max(1, epoch_size // self.batch_size)
        self.schedule = self.method.label_update_steps(self.steps_per_epoch, cfg.run.epochs)
        self.monitor = None
        if procs.is_main and cfg.run.knn_monitor and self.data.true_labels is not None:
            data, size = self.data, cfg.run.knn_monitor
            self.monitor = KnnMonitor(
                data.images, data.true_labels, size, self.seed("knn"), self.cluster_view
            )
        label_view = ClusterView(
            cfg.data.input_size, cfg.data.mean, cfg.data.std, cfg.cluster.label_view == "grayscale"
        )
        self.labeller = LabelPhase(
            cfg,
            self.method,
            self.nets,
            self.resources,
            self.data,
            self.precision,
            (label_view, self.train_view),
            self.progress,
            self.diverged,
        )
        if self.resume:
            self._load()
        self.resources.open_writer(purge_step=self.state.epoch or None)
        log.info(
            "run %s: %s on %d images, arch %s at %d px, %s, %s/%s, %d steps/epoch",
            self.run_dir.root,
            cfg.method,
            n_images,
            cfg.model.arch,
            cfg.data.input_size,
            "clusters by PIC" if cfg.cluster.algorithm == "pic" else f"k={cfg.cluster.k}",
            device,
            self.precision.name,
            self.steps_per_epoch,
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Write checkpoints/last.pt atomically; refuse (and stop the run) if the weights are no longer finite."""
        bad = self.nets.first_non_finite()
        if bad is not None:
            self.diverged(f"{bad} became NaN or infinite")
        rng = self.procs.all_gather_object(
            capture_rng_state()
        )  # every process's generators, for exact resume
        if self.procs.is_main:
            networks = {**self.nets.state(), "method": self.method.state_dict()}
            state = checkpoint_state(
                self.config.to_dict(), networks, self.state, self.data.indices, rng, self.steps_per_epoch
            )
            self.run_dir.save_checkpoint(state)

    def diverged(self, what: str) -> None:
        """Stop the run: `what` became NaN or infinite."""
        raise TrainingDiverged(
            f"{what} at epoch {self.state.epoch}, step {self.state.step}; the last good checkpoint is "
            f"{self.run_dir.checkpoint}. Lower --lr (now {self.config.optim.lr}) and start again, or resume "
            "with a lower rate."
        )

    def _load(self) -> None:
        try:
            ckpt = self.run_dir.load_checkpoint(self.trust_checkpoint, writable=self.procs.is_main)
        except NoCheckpoint as error:
            raise ConfigError(f"--resume {self.run_dir.root}: {error}") from None
        if not np.array_equal(ckpt["indices"], self.data.indices):
            raise ConfigError(f"--resume {self.run_dir.root}: the images readable now differ from the run's")
        self.state = loop_state(ckpt, self.schedule, self.steps_per_epoch)
        self.nets.load(ckpt, labels=self.state.labels, epoch=self.state.epoch)
        self.method.load_state_dict(ckpt.get("method") or {})
        rng = rng_states(ckpt)
        if len(rng) == self.procs.world_size:
            restore_rng_state(rng[self.procs.rank])
        else:
            log.warning(
                "the run was saved by %d process(es) and resumes on %d: random draws of dropout differ from an "
                "unbroken run (everything else is seeded by step)",
                len(rng),
                self.procs.world_size,
            )
            seed_everything(self.seed("resume", self.procs.rank, self.state.step))
        if self.procs.is_main:
            self.run_dir.write_metrics(self.state.history)
        log.info("resumed %s at epoch %d, step %d", self.run_dir.root, self.state.epoch, self.state.step)
