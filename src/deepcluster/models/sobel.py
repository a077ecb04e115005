"""Fixed Sobel filtering layer used in front of DeepCluster backbones."""

from __future__ import annotations

import torch
from torch import nn

SOBEL_X: tuple[tuple[float, ...], ...] = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))


class Sobel(nn.Sequential):
    """Grayscale conversion followed by horizontal and vertical Sobel filters.

    Index 0 is a ``Conv2d(3, 1, 1)`` averaging the RGB channels (weights 1/3), index 1 a
    ``Conv2d(1, 2, 3, padding=1)`` holding the Sobel x kernel and its transpose (y). Biases are 0 and no
    parameter requires grad. The layout (``sobel.0.weight`` ... ``sobel.1.bias``) matches the released
    DeepCluster checkpoints. Input ``[B, 3, H, W]``, output ``[B, 2, H, W]`` (channel 0 = x, 1 = y).
    """

    def __init__(self) -> None:
        grayscale = nn.Conv2d(3, 1, kernel_size=1, stride=1, padding=0)
        gradients = nn.Conv2d(1, 2, kernel_size=3, stride=1, padding=1)
        super().__init__(grayscale, gradients)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re)write the fixed grayscale and Sobel values and freeze every parameter."""
        grayscale, gradients = self[0], self[1]
        kernel_x = torch.tensor(SOBEL_X)
        with torch.no_grad():
            grayscale.weight.fill_(1.0 / 3.0)
            grayscale.bias.zero_()
            gradients.weight[0, 0].copy_(kernel_x)
            gradients.weight[1, 0].copy_(kernel_x.t())
            gradients.bias.zero_()
        for param in self.parameters():
            param.requires_grad_(False)
