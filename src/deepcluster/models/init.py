"""Weight initialisation used by DeepCluster for AlexNet and VGG."""

from __future__ import annotations

import math

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
