"""Top-activating images (DeepCluster paper, visualisations): the images of a sample that excite a channel most.

* :func:`channel_means`: spatial mean activation of a few channels of a tap on every image.
* :func:`top_activating_indices`: for each channel, the images with the largest means, highest first.
* :func:`top_activating_images`: those images as one row per channel of a PNG grid.

Every function puts the network in eval mode for its work and leaves its training flag and the
``requires_grad`` of its parameters as it found them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from deepcluster.models.backbone import frozen_eval, module_device
from deepcluster.report.picture import Picture, save_figure
from deepcluster.report.taps import check_channels


def channel_means(
    backbone: nn.Module,
    images: torch.Tensor,
    view: Callable[[torch.Tensor], torch.Tensor],
    tap: str,
    channels: Sequence[int],
    batch_size: int = 128,
) -> np.ndarray:
    """Spatial mean activation of ``channels`` at ``tap`` for every image: float [n, len(channels)].

    ``images`` uint8 [n, 3, S, S] go through ``view`` batch by batch; eval mode, no grad.
    """
    check_channels(backbone, tap, channels)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 [n, 3, S, S], got shape {tuple(images.shape)}")
    index = torch.as_tensor(list(channels), dtype=torch.long)
    device = module_device(backbone)
    out = []
    with frozen_eval(backbone), torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = view(images[start : start + batch_size]).to(device)
            act = backbone.forward_taps(x, [tap])[tap]
            out.append(act.mean(dim=(2, 3))[:, index.to(act.device)].float().cpu())
    if not out:
        return np.zeros((0, len(index)), dtype=np.float32)
    return torch.cat(out).numpy()


def top_activating_indices(means: np.ndarray, per_channel: int) -> np.ndarray:
    """For each column of ``means`` [n, c], the indices of its ``per_channel`` largest values, highest first.

    Ties go to the lower index. Returns int64 [c, min(per_channel, n)].
    """
    keep = min(per_channel, means.shape[0])
    order = np.argsort(-means, axis=0, kind="stable")[:keep]
    return np.ascontiguousarray(order.T).astype(np.int64)


def top_activating_images(
    backbone: nn.Module,
    images: torch.Tensor,
    view: Callable[[torch.Tensor], torch.Tensor],
    thumbs: np.ndarray,
    tap: str,
    channels: Sequence[int],
    out_path: Path,
    rel_path: str,
    per_channel: int = 8,
    batch_size: int = 128,
) -> Picture:
    """One row per channel of ``tap``: the ``per_channel`` images that excite it most, highest first.

    A channel's activation on an image is its spatial mean at ``tap`` (post-ReLU); ``thumbs`` uint8
    [n, h, w, 3] are what is shown for the ``images`` [n, 3, S, S] given to the network through ``view``.
    """
    if len(thumbs) != len(images):
        raise ValueError(f"{len(thumbs)} thumbnails for {len(images)} images: they must match")
    if len(images) == 0:
        raise ValueError("no images to rank")
    if per_channel < 1:
        raise ValueError(f"per_channel must be >= 1, got {per_channel}")
    means = channel_means(backbone, images, view, tap, channels, batch_size)
    order = top_activating_indices(means, per_channel)
    rows, cols = order.shape
    figure = Figure(figsize=(0.9 * cols + 0.8, 0.95 * rows + 0.2))
    grid = figure.subplots(rows, cols, squeeze=False)
    for r, channel in enumerate(channels):
        for c in range(cols):
            axes = grid[r, c]
            i = int(order[r, c])
            axes.imshow(thumbs[i], interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_title(f"{means[i, r]:.2f}", fontsize=6, pad=2)
            for spine in axes.spines.values():
                spine.set_visible(False)
        grid[r, 0].set_ylabel(f"ch {channel}", fontsize=8, rotation=0, ha="right", va="center")
    figure.subplots_adjust(wspace=0.05, hspace=0.35)
    save_figure(figure, Path(out_path))
    caption = (
        f"Channels of {tap}: each row shows the {cols} images (of a sample of {len(images)}) with the "
        "highest "
        f"mean activation of that channel, highest first; the number above an image is that activation."
    )
    return Picture(f"Top images, {tap}", rel_path, caption)
