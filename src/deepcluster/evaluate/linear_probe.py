"""Linear probes on frozen backbone layers, following the DeepCluster protocol (Caron et al. 2018, sec. 5.1).

The backbone is frozen (eval mode, no gradients). Each requested tap (``conv1`` .. ``conv5``, or the
penultimate embedding ``fc``) is average-pooled so that its flattened size is about 9,000 and feeds its own
``nn.Linear``. All probes are trained together, so one forward of the frozen backbone per batch feeds every tap.
Training uses SGD with momentum on random crops + flips of the train split; the test split is scored on a
centre view. Randomness (shuffling, augmentation, probe init) comes from one seeded ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align
from tqdm.auto import tqdm

from deepcluster.config import IMAGENET_MEAN, IMAGENET_STD
from deepcluster.data.views import TrainView, center_crop_offsets
from deepcluster.models.backbone import Backbone, ConvFCBackbone
from deepcluster.models.heads import linear_head
from deepcluster.models.resnet import ResNetBackbone

FC_TAP = "fc"
"""Name of the penultimate embedding (the backbone's output, after ReLU) as a probe tap."""
TARGET_DIM = 9216
"""Flattened size the pooled conv activations aim for (256x6x6, AlexNet's conv5 at 224 px)."""
SCHEDULES = ("step", "cosine", "constant")


@dataclass(frozen=True)
class ProbeConfig:
    """Hyper-parameters of :func:`linear_probe` (defaults after DeepCluster's ``eval_linear.py``).

    ``schedule``: ``step`` multiplies the lr by ``gamma`` every ``step_every`` epochs (default: a third of the
    epochs), ``cosine`` anneals it to 0 over the epochs, ``constant`` keeps it. ``crop_fraction``: side of the
    square crop relative to the image (224/256 in the paper), random on the train split, centred on the test
    split, resized to the backbone's input size.
    """

    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"
    step_every: int | None = None
    gamma: float = 0.1
    crop_fraction: float = 0.875
    flip: bool = True
    target_dim: int = TARGET_DIM
    seed: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("epochs", "batch_size", "target_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ProbeConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")

    def lr_at(self, epoch: int) -> float:
        """Learning rate used during ``epoch`` (0-based)."""
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1.0 + math.cos(math.pi * epoch / self.epochs))
        if self.schedule == "step":
            every = self.step_every or max(1, self.epochs // 3)
            return self.lr * self.gamma ** (epoch // every)
        return self.lr


@dataclass
class LinearProbeResult:
    """Outcome of :func:`linear_probe`; :meth:`to_dict` gives a JSON-serialisable form."""

    top1: dict[str, float]
    """Test-split top-1 accuracy per tap, in [0, 1]."""
    dims: dict[str, int]
    """Input size of each tap's linear layer."""
    pool_sizes: dict[str, int | None]
    """Adaptive-average-pool output side per conv tap (None for ``fc``)."""
    train_loss: dict[str, list[float]] = field(default_factory=dict)
    """Mean training cross-entropy per epoch, per tap."""
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1": dict(self.top1),
            "dims": dict(self.dims),
            "pool_sizes": dict(self.pool_sizes),
            "train_loss": {tap: list(losses) for tap, losses in self.train_loss.items()},
            "config": dict(self.config),
        }


def probe_pool_size(channels: int, spatial: int, target: int = TARGET_DIM) -> int:
    """Pooled side ``s`` in ``1..spatial`` with ``channels * s * s`` closest to ``target`` (ties: smaller s)."""
    if channels < 1 or spatial < 1:
        raise ValueError(f"need positive channels and spatial size, got {channels} and {spatial}")
    return min(range(1, spatial + 1), key=lambda s: (abs(channels * s * s - target), s))


def probe_taps(backbone: Backbone, include_fc: bool = False) -> list[str]:
    """Default probe taps of ``backbone``: its conv taps, plus ``fc`` when asked."""
    return [*backbone.tap_names, *([FC_TAP] if include_fc else [])]


def tap_activations(backbone: Backbone, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{tap: activation}`` from one forward pass; ``fc`` is the ReLU of the backbone's embedding.

    Conv taps are post-ReLU activations ``[B, C, H, W]`` (see ``Backbone.forward_taps``); ``fc`` is ``[B, D]``.
    """
    valid = [*backbone.tap_names, FC_TAP]
    unknown = [tap for tap in taps if tap not in valid]
    if unknown:
        raise ValueError(f"unknown probe tap(s) {unknown} for arch '{backbone.arch}'; valid taps: {valid}")
    conv_taps = [tap for tap in taps if tap != FC_TAP]
    if FC_TAP not in taps:
        return backbone.forward_taps(x, conv_taps)
    if isinstance(backbone, (ConvFCBackbone, ResNetBackbone)):
        found: dict[str, torch.Tensor] = {}
        h = backbone.preprocess(x)
        for name, module in backbone.tap_stages():
            h = module(h)
            if name in conv_taps:
                found[name] = h
        if isinstance(backbone, ConvFCBackbone):
            embedding = backbone.classifier(torch.flatten(h, 1))
        else:
            embedding = torch.flatten(backbone.avgpool(h), 1)
    else:  # unknown backbone family: two passes rather than guessing its embedding tail
        found = backbone.forward_taps(x, conv_taps)
        embedding = backbone(x)
    found[FC_TAP] = F.relu(embedding)
    return {tap: found[tap] for tap in taps}


def center_view(
    images: torch.Tensor,
    input_size: int,
    crop_fraction: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> the centred square crop of side ``crop_fraction * min(H, W)``, resized to
    ``input_size`` (bilinear, as the train view's crops) and normalised; float32 ``[B, 3, input_size, input_size]``.
    """
    n, _, height, width = images.shape
    side = max(1, int(round(crop_fraction * min(height, width))))
    top, left = center_crop_offsets(height, side), center_crop_offsets(width, side)
    box = torch.tensor([left, top, left + side, top + side], dtype=torch.float32)
    rois = torch.cat([torch.arange(n, dtype=torch.float32).unsqueeze(1), box.expand(n, 4)], dim=1)
    x = roi_align(images.float(), rois.to(images.device), output_size=input_size, aligned=True).div_(255.0)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def _as_images(images: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.dim() != 4 or t.shape[1] != 3:
        raise ValueError(f"{name} must be a uint8 [N, 3, H, W] tensor, got {t.dtype} {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return t.cpu()


def _pool(activation: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None:
        return activation
    return torch.flatten(F.adaptive_avg_pool2d(activation, size), 1)


def linear_probe(
    backbone: Backbone,
    train_images: torch.Tensor | np.ndarray,
    train_labels: Sequence[int] | np.ndarray,
    test_images: torch.Tensor | np.ndarray,
    test_labels: Sequence[int] | np.ndarray,
    taps: Sequence[str] | None = None,
    config: ProbeConfig | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> LinearProbeResult:
    """Train one linear classifier per tap of the frozen ``backbone`` and score it on the test split.

    Images are uint8 ``[N, 3, H, W]``; labels are integers (any values: they are mapped to class indices).
    ``taps`` defaults to every conv tap (add ``"fc"`` for the penultimate embedding). Conv activations are
    adaptive-average-pooled to the side from :func:`probe_pool_size`. The backbone is moved to ``device`` and
    run in eval mode under ``no_grad``; its train/eval mode is restored afterwards. Deterministic for a given
    ``config.seed`` on a given device. ``progress`` shows a tqdm bar.
    """
    config = config or ProbeConfig()
    train_x, test_x = _as_images(train_images, "train_images"), _as_images(test_images, "test_images")
    train_y_raw, test_y_raw = np.asarray(train_labels).ravel(), np.asarray(test_labels).ravel()
    if len(train_y_raw) != len(train_x) or len(test_y_raw) != len(test_x):
        raise ValueError(
            f"images and labels differ in number: train {len(train_x)} vs {len(train_y_raw)}, "
            f"test {len(test_x)} vs {len(test_y_raw)}"
        )
    classes = np.unique(np.concatenate([train_y_raw, test_y_raw]))
    train_y = torch.as_tensor(np.searchsorted(classes, train_y_raw), dtype=torch.int64)
    test_y = torch.as_tensor(np.searchsorted(classes, test_y_raw), dtype=torch.int64)
    taps = list(taps) if taps is not None else probe_taps(backbone)
    if not taps:
        raise ValueError("no taps to probe")

    device = torch.device(device)
    was_training = backbone.training
    backbone.to(device).eval()
    generator = torch.Generator().manual_seed(config.seed)
    train_view = TrainView(
        backbone.input_size,
        config.mean,
        config.std,
        scale=(config.crop_fraction**2, config.crop_fraction**2),
        ratio=(1.0, 1.0),
        flip=config.flip,
    )

    def test_view(images: torch.Tensor) -> torch.Tensor:
        return center_view(images, backbone.input_size, config.crop_fraction, config.mean, config.std)

    try:
        with torch.no_grad():
            sample = tap_activations(backbone, test_view(test_x[:1]).to(device), taps)
        pool_sizes = {
            tap: None
            if act.dim() == 2
            else probe_pool_size(act.shape[1], min(act.shape[-2:]), config.target_dim)
            for tap, act in sample.items()
        }
        dims = {tap: _pool(act, pool_sizes[tap]).shape[1] for tap, act in sample.items()}
        probes = nn.ModuleDict(
            {tap: linear_head(dims[tap], len(classes), generator=generator) for tap in taps}
        ).to(device)
        optimizer = torch.optim.SGD(
            probes.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        train_loss: dict[str, list[float]] = {tap: [] for tap in taps}
        n_batches = math.ceil(len(train_x) / config.batch_size)
        quiet = None if progress else True  # None: bars on a terminal only
        bar = tqdm(total=config.epochs * n_batches, desc="linear probe", disable=quiet, leave=False)
        for epoch in range(config.epochs):
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(epoch)
            sums = dict.fromkeys(taps, 0.0)
            order = torch.randperm(len(train_x), generator=generator)
            for start in range(0, len(train_x), config.batch_size):
                index = order[start : start + config.batch_size]
                x = train_view(train_x[index], generator).to(device)
                y = train_y[index].to(device)
                with torch.no_grad():
                    acts = tap_activations(backbone, x, taps)
                losses = {
                    tap: F.cross_entropy(probes[tap](_pool(acts[tap], pool_sizes[tap])), y) for tap in taps
                }
                optimizer.zero_grad(set_to_none=True)
                torch.stack(list(losses.values())).sum().backward()
                optimizer.step()
                for tap, loss in losses.items():
                    sums[tap] += loss.item() * len(index)
                bar.update(1)
                bar.set_postfix(
                    epoch=epoch, loss=f"{sum(sums.values()) / len(taps) / (start + len(index)):.3f}"
                )
            for tap in taps:
                train_loss[tap].append(sums[tap] / len(train_x))
        bar.close()

        correct = dict.fromkeys(taps, 0)
        with torch.no_grad():
            for start in range(0, len(test_x), config.batch_size):
                x = test_view(test_x[start : start + config.batch_size]).to(device)
                y = test_y[start : start + config.batch_size].to(device)
                acts = tap_activations(backbone, x, taps)
                for tap in taps:
                    predicted = probes[tap](_pool(acts[tap], pool_sizes[tap])).argmax(dim=1)
                    correct[tap] += int((predicted == y).sum().item())
    finally:
        backbone.train(was_training)
    return LinearProbeResult(
        top1={tap: correct[tap] / len(test_x) for tap in taps},
        dims=dims,
        pool_sizes=pool_sizes,
        train_loss=train_loss,
        config={**asdict(config), "taps": taps, "n_classes": len(classes), "device": str(device)},
    )
