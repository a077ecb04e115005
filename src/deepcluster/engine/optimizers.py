"""The optimisers of a run: SGD with momentum, or LARS (layer-wise adaptive rate scaling, You et al. 2017) as
the SwAV paper trains its v2 methods, with biases and normalisation weights left out of the adaptation."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from deepcluster.config import OptimConfig

LARS_ETA = 0.02
"""Trust coefficient of LARS (SwAV's value)."""


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight matrix is scaled by eta * ||w|| / ||grad + wd * w||.

    One-dimensional parameters (biases, batch-norm weights) take the plain SGD step and no weight decay, as in
    the SwAV code. The state is SGD's momentum buffer, so a checkpoint restores it exactly.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        momentum: float,
        weight_decay: float,
        eta: float = LARS_ETA,
    ) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        """One update of every parameter that has a gradient (closures are not supported)."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if param.ndim > 1:
                    grad = grad.add(param, alpha=group["weight_decay"])
                    weight_norm, grad_norm = torch.norm(param), torch.norm(grad)
                    trust = torch.where(
                        (weight_norm > 0) & (grad_norm > 0), group["eta"] * weight_norm / grad_norm, 1.0
                    )
                    grad = grad.mul(trust)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])


def make_optimizer(
    name: str, parameters: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """`sgd` (torch's SGD) or `lars` over the trainable `parameters`."""
    trainable = [p for p in parameters if p.requires_grad]
    if name == "lars":
        return LARS(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)


def lr_factor(optim: OptimConfig, epochs: int, steps_per_epoch: int, epoch: int, step: int) -> float:
    """The learning rate's multiple at a step of a run of `epochs` epochs: linear warm-up over
    `optim.warmup_epochs`, then constant or cosine (over the whole run) down to `optim.min_lr_ratio`."""
    now = epoch * steps_per_epoch + step
    warmup = optim.warmup_epochs * steps_per_epoch
    if now < warmup:
        return (now + 1) / (warmup + 1)
    if optim.schedule == "constant":
        return 1.0
    progress = now / max(1, epochs * steps_per_epoch)
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
