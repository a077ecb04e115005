"""Weight initialisation used by DeepCluster for AlexNet and VGG."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepcluster.models.sobel import Sobel

LINEAR_INIT_STD = 0.01


def conv_init_std(conv: nn.Conv2d) -> float:
    """Standard deviation ``sqrt(2 / (k_h * k_w * out_channels))`` used for a conv layer's weights."""
    k_h, k_w = conv.kernel_size
    return math.sqrt(2.0 / (k_h * k_w * conv.out_channels))


def init_deepcluster_weights(module: nn.Module) -> None:
    """Initialise ``module`` in place as in Caron et al. (2018), leaving :class:`Sobel` layers untouched.

    Conv2d weights ~ N(0, sqrt(2 / (k*k*out))), conv biases 0; BatchNorm weight 1, bias 0;
    Linear weights ~ N(0, 0.01), biases 0. Uses the global torch RNG.
    """
    if isinstance(module, Sobel):
        return
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, mean=0.0, std=conv_init_std(module))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=LINEAR_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    for child in module.children():
        init_deepcluster_weights(child)


def random_patches(
    inputs: torch.Tensor, kernel_size: tuple[int, int], count: int, generator: torch.Generator
) -> torch.Tensor:
    """`count` of the k x k patches of `inputs` [N, C, H, W] (stride 1, no padding) drawn without replacement, as
    rows [count, C*k*k] in `unfold`'s order: the rows `unfold(...).transpose(1, 2).reshape(-1, C*k*k)[picked]`
    would give, gathered by index instead of unfolding every patch of every image (at 2,048 images of 64 px that
    was gigabytes)."""
    n, channels, height, width = inputs.shape
    k_h, k_w = kernel_size
    out_h, out_w = height - k_h + 1, width - k_w + 1
    picked = torch.randperm(n * out_h * out_w, generator=generator)[:count]
    image, place = picked // (out_h * out_w), picked % (out_h * out_w)
    top, left = place // out_w, place % out_w
    c, dy, dx = torch.meshgrid(
        torch.arange(channels), torch.arange(k_h), torch.arange(k_w), indexing="ij"
    )  # [C, k_h, k_w] each: unfold's order
    gathered = inputs[
        image[:, None, None, None],
        c[None],
        top[:, None, None, None] + dy[None],
        left[:, None, None, None] + dx[None],
    ]
    return gathered.reshape(len(picked), -1).float()


def whitening_filters(
    inputs: torch.Tensor, conv: nn.Conv2d, generator: torch.Generator, patches: int = 100_000
) -> int:
    """Set `conv`'s filters to whitening filters of its `inputs` [N, C, H, W] (what it sees): for the top
    principal directions v of up to `patches` random k x k input patches (variance l), the filters
    v / sqrt(l + eps) and their negatives, so that each responds with unit variance (eps: 1 % of the mean
    variance); bias 0. Filters beyond twice the patch dimension keep their weights. Draws only from
    `generator`. Returns how many filters were set."""
    rows = random_patches(inputs, conv.kernel_size, patches, generator).double()
    rows = rows - rows.mean(dim=0)
    variance, directions = torch.linalg.eigh(rows.T @ rows / max(1, len(rows) - 1))  # ascending
    half = min(conv.out_channels // 2, rows.shape[1])
    eps = 0.01 * float(variance.mean())
    top = directions[:, -half:].flip(1) / torch.sqrt(variance[-half:].flip(0) + eps)  # [C*k*k, half]
    filters = torch.cat([top.T, -top.T]).to(conv.weight.dtype).reshape(2 * half, *conv.weight.shape[1:])
    with torch.no_grad():
        conv.weight[: 2 * half] = filters
        if conv.bias is not None:
            conv.bias.zero_()
    return 2 * half
