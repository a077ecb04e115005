"""The networks a run trains and their optimisers: the backbone (kept for the whole run) and the heads (new after
every label update for most methods), each wrapped for DistributedDataParallel under torchrun."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from deepcluster.config import ConfigError, TrainConfig
from deepcluster.data.stream import batches
from deepcluster.engine.distributed import Processes
from deepcluster.engine.optimizers import make_optimizer
from deepcluster.methods import Assignment, Method
from deepcluster.models import build_backbone, channels_last
from deepcluster.models.backbone import frozen_eval
from deepcluster.models.init import whitening_filters
from deepcluster.seeding import derive_seed, torch_generator


def new_backbone(config: TrainConfig) -> nn.Module:
    """The configured backbone, freshly initialised from torch's global generator."""
    model = config.model
    try:
        return build_backbone(model.arch, sobel=model.sobel, input_size=config.data.input_size)
    except ValueError as error:  # an input size the architecture cannot take: name both options
        raise ConfigError(
            f"--arch {model.arch} at --input-size {config.data.input_size}: {error} (model.arch, data.input_size)"
        ) from error


FIRST_CONV_IMAGES = 2048
"""Images whose patches make the first convolution's whitening filters (`model.first_conv`)."""


def first_conv_from_data(
    backbone: nn.Module,
    images: Any,
    view: Callable[[torch.Tensor], torch.Tensor],
    mode: str,
    seed: int,
    fresh: bool,
) -> None:
    """`model.first_conv`: on a fresh run, the first trained convolution's filters become whitening filters of
    its inputs on a seeded sample of the images (`models.init.whitening_filters`); `patches_frozen` keeps them
    fixed (on a resume too)."""
    if mode == "random":
        return
    conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad)
    if fresh:
        generator = torch_generator(seed)
        n = len(images)
        rows = torch.randperm(n, generator=generator)[: min(n, FIRST_CONV_IMAGES)].sort().values
        seen: list[torch.Tensor] = []
        hook = conv.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().float()))
        with frozen_eval(backbone), torch.no_grad():
            for sample in batches(images, [rows.to(images.device)]):
                backbone(channels_last(view(sample.cpu())))
        hook.remove()
        whitening_filters(torch.cat(seen).cpu(), conv, generator)
    if mode == "patches_frozen":
        for parameter in conv.parameters():
            parameter.requires_grad_(False)


def _sgd(parameters: Any, lr: float, config: TrainConfig) -> torch.optim.Optimizer:
    optim = config.optim
    return make_optimizer(optim.optimizer, parameters, lr, optim.momentum, optim.weight_decay)


class Networks:
    """Backbone, heads and their SGD optimisers; `train_*` are the modules the training step calls (DDP-wrapped
    under torchrun, the modules themselves in one process)."""

    def __init__(
        self, config: TrainConfig, method: Method, backbone: nn.Module, procs: Processes, device: torch.device
    ) -> None:
        self.config, self.method, self.procs, self.device = config, method, procs, device
        self.backbone = backbone.to(device).to(memory_format=torch.channels_last)
        self.train_backbone: nn.Module = procs.wrap(self.backbone, every_parameter_used=True)
        self.optimizer = _sgd(self.backbone.trainable_parameters(), config.optim.lr, config)
        self.heads: nn.Module | None = None
        self.train_heads: nn.Module | None = None
        self.head_optimizer: torch.optim.Optimizer | None = None
        self.n_classes: int | None = None

    def new_heads(self, assignment: Assignment, epoch: int) -> None:
        """Freshly initialised heads for the assignment's labels (seeded by the epoch) and their optimiser."""
        heads = self.method.build_heads(self.backbone.feature_dim, assignment, self._generator(epoch))
        self._use(heads, assignment.n_classes)

    def first_heads(self, epoch: int) -> None:
        """The method's heads for the first labels to be made through (`Method.initial_heads`), if any."""
        heads = self.method.initial_heads(self.backbone.feature_dim, self._generator(epoch))
        if heads is not None:
            self._use(heads, self.config.cluster.k)

    def _generator(self, epoch: int) -> torch.Generator:
        return torch_generator(derive_seed(self.config.run.seed, "heads", epoch))

    def _use(self, heads: nn.Module, n_classes: int) -> None:
        """`heads` (of `n_classes` classes) as the run's heads, with a new optimiser."""
        self.heads = heads.to(self.device)
        self.train_heads = None  # unhook the previous heads' wrapper before wrapping the new ones
        self.train_heads = self.procs.wrap(self.heads, getattr(self.heads, "every_parameter_used", True))
        self.n_classes = n_classes
        optim, trained = self.config.optim, [p for p in self.heads.parameters() if p.requires_grad]
        # heads with nothing to train (DeepCluster-v2's fixed prototypes without a projection head): no optimiser
        self.head_optimizer = _sgd(trained, optim.head_lr or optim.lr, self.config) if trained else None

    def unwrap(self) -> None:
        """Drop the DDP wrappers (the training modules become the modules themselves): a wrapper holds the
        process group, which therefore outlived destroy_process_group and had gloo's threads still running
        when the interpreter shut down (an occasional SIGABRT at the end of a torchrun run)."""
        self.train_backbone = self.backbone
        self.train_heads = self.heads

    def set_lr(self, factor: float) -> None:
        """Learning rates at `factor` times their base (optim.lr; optim.head_lr or lr for the heads)."""
        optim = self.config.optim
        for group in self.optimizer.param_groups:
            group["lr"] = optim.lr * factor
        if self.head_optimizer is not None:
            for group in self.head_optimizer.param_groups:
                group["lr"] = (optim.head_lr or optim.lr) * factor

    def eval(self) -> None:
        self.backbone.eval()
        if self.heads is not None:
            self.heads.eval()

    def train(self) -> None:
        self.backbone.train()
        if self.heads is not None:
            self.heads.train()

    def step(self, loss: torch.Tensor) -> None:
        """One SGD step of the backbone and the heads on `loss`."""
        optimizers = [self.optimizer] + ([self.head_optimizer] if self.head_optimizer is not None else [])
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()

    def first_non_finite(self) -> str | None:
        """'backbone weight NAME' (or 'head weight NAME', 'backbone buffer NAME') of the first parameter or
        floating buffer (batch norm's running statistics) that is NaN or infinite."""
        modules = [("backbone", self.backbone)] + ([("head", self.heads)] if self.heads is not None else [])
        for owner, module in modules:
            for kind, named in (("weight", module.named_parameters()), ("buffer", module.named_buffers())):
                for name, value in named:
                    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                        return f"{owner} {kind} {name}"
        return None

    def state(self) -> dict[str, Any]:
        """The checkpoint's model fields."""
        return {
            "arch": self.config.model.arch,
            "model": self.backbone.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "heads": None if self.heads is None else self.heads.state_dict(),
            "head_optimizer": None if self.head_optimizer is None else self.head_optimizer.state_dict(),
            "n_classes": None if self.heads is None else self.n_classes,
        }

    def load(self, checkpoint: dict[str, Any], labels: Any, epoch: int) -> None:
        """Put back what `state` saved (heads rebuilt for `labels` first, as the label update had built them)."""
        self.backbone.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint["heads"] is not None:
            self.new_heads(Assignment(labels=labels, n_classes=checkpoint["n_classes"]), epoch=epoch)
            assert self.heads is not None
            self.heads.load_state_dict(checkpoint["heads"])
            if self.head_optimizer is not None:
                self.head_optimizer.load_state_dict(checkpoint["head_optimizer"])
