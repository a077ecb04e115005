"""VGG-16 with batch norm, as used by DeepCluster, for 224 px and small (16-96 px) inputs."""

from __future__ import annotations

from torch import nn

from deepcluster.models.backbone import ConvFCBackbone, check_input_size
from deepcluster.models.init import init_deepcluster_weights

BLOCK_WIDTHS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)
EMBED_DIM = 4096
FULL_MIN_SIZE = 128
SMALL_MIN_SIZE = 16
SMALL_MAX_SIZE = 96


class VGG16BN(ConvFCBackbone):
    """DeepCluster's VGG-16: 13 conv3x3+BN+ReLU layers in 5 blocks, then Linear, ReLU, Dropout, Linear.

    ``forward`` returns the second FC layer's output *before* its ReLU (the trainer applies it).
    Full variant (``small=False``, arch ``vgg16``, >= 128 px): a 2x2 max-pool after every block,
    512x7x7 at 224 px. Small variant (``small=True``, arch ``vgg16_small``, 16-96 px): the *last* max-pool
    is removed for inputs <= 48 px and kept above, so 32 px -> 512x2x2 (Linear(2048, 4096)), 64 px -> 512x2x2,
    96 px -> 512x3x3. The flattened size is computed from ``input_size``. Taps: ``conv1`` .. ``conv5``, the
    ReLU output of the last conv of each block (before its pool).
    """

    def __init__(self, sobel: bool = True, input_size: int = 224, small: bool = False) -> None:
        arch = "vgg16_small" if small else "vgg16"
        if small:
            check_input_size(
                arch,
                input_size,
                SMALL_MIN_SIZE,
                SMALL_MAX_SIZE,
                above_hint=f"; use arch 'vgg16' for inputs of {FULL_MIN_SIZE} px or more",
            )
        else:
            check_input_size(
                arch,
                input_size,
                FULL_MIN_SIZE,
                below_hint=f"; use arch 'vgg16_small' for {SMALL_MIN_SIZE}-{SMALL_MAX_SIZE} px inputs",
            )
        super().__init__(arch, input_size, sobel)
        self.feature_dim = EMBED_DIM
        last_pool = not (small and input_size <= 48)

        layers: list[nn.Module] = []
        self.tap_index = {}
        channels, size = self.in_channels, input_size
        for block, widths in enumerate(BLOCK_WIDTHS):
            for width in widths:
                layers += [
                    nn.Conv2d(channels, width, kernel_size=3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            self.tap_index[f"conv{block + 1}"] = len(layers) - 1
            if block < len(BLOCK_WIDTHS) - 1 or last_pool:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.flat_dim = channels * size * size
        self.classifier = nn.Sequential(
            nn.Linear(self.flat_dim, EMBED_DIM),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(EMBED_DIM, EMBED_DIM),
        )
        init_deepcluster_weights(self)


def vgg16_bn(sobel: bool = True, input_size: int = 224) -> VGG16BN:
    """DeepCluster VGG-16-BN for inputs of 128 px or more (224 px in the paper)."""
    return VGG16BN(sobel=sobel, input_size=input_size, small=False)


def vgg16_bn_small(sobel: bool = True, input_size: int = 32) -> VGG16BN:
    """VGG-16-BN adapted to 16-96 px inputs (last max-pool dropped at <= 48 px)."""
    return VGG16BN(sobel=sobel, input_size=input_size, small=True)
