"""Name -> backbone builder registry and size-based architecture defaults."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType

from deepcluster.config import ConfigError
from deepcluster.config.options import closest
from deepcluster.models.alexnet import (
    FULL_MIN_SIZE,
    SMALL_MAX_SIZE,
    alexnet_bn,
    alexnet_bn_small,
    alexnet_small_gap,
)
from deepcluster.models.backbone import Backbone
from deepcluster.models.resnet import resnet18, resnet18_small, resnet50
from deepcluster.models.vgg import vgg16_bn, vgg16_bn_small

ARCHITECTURES: Mapping[str, Callable[..., Backbone]] = MappingProxyType(
    {
        "alexnet": alexnet_bn,
        "alexnet_small": alexnet_bn_small,
        "alexnet_small_gap": alexnet_small_gap,
        "alexnet_small_gap_half": partial(alexnet_small_gap, width=0.5),
        "alexnet_small_gap_double": partial(alexnet_small_gap, width=2.0),
        "vgg16": vgg16_bn,
        "vgg16_small": vgg16_bn_small,
        "resnet18": resnet18,
        "resnet18_small": resnet18_small,
        "resnet50": resnet50,
    }
)
"""Registry of backbone builders; each is called as ``builder(sobel=..., input_size=...)``."""

FAMILIES: tuple[str, ...] = ("alexnet", "vgg16", "resnet18", "resnet50")
_SIZED_FAMILIES: tuple[str, ...] = ("alexnet", "vgg16")


def build_backbone(arch: str, sobel: bool = True, input_size: int = 224) -> Backbone:
    """Build the backbone registered as ``arch`` with weights initialised as in the paper (never downloaded).

    Raises ValueError for an unknown ``arch`` (listing the choices) or an ``input_size`` the
    architecture does not support (suggesting the variant that does).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](sobel=sobel, input_size=input_size)


def check_arch(arch: str | None) -> None:
    """ConfigError naming `--arch` (model.arch) and the choices when `arch` is set and not registered."""
    if arch is not None and arch not in ARCHITECTURES:
        raise ConfigError(
            f"--arch {arch}: unknown architecture{closest(arch, list(ARCHITECTURES))} (model.arch); "
            f"choose from {', '.join(ARCHITECTURES)}"
        )


def takes_any_input_size(arch: str) -> bool:
    """True when the architecture pools globally before its output (ResNets), so that one network takes crops
    of several sizes; AlexNet and VGG have FC layers sized for one input."""
    return "_gap" in arch or not arch.startswith(_SIZED_FAMILIES)


def default_arch_for(input_size: int, family: str = "alexnet") -> str:
    """Registry name of ``family``'s variant suited to ``input_size``.

    AlexNet / VGG-16: the ``_small`` variant up to 96 px, the full one from 128 px (97-127 px is rejected).
    ResNets handle every size themselves, so the family name is returned unchanged.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown architecture family {family!r}; choose one of {list(FAMILIES)}")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size <= 0:
        raise ValueError(f"input_size must be a positive integer (pixels), got {input_size!r}")
    if family not in _SIZED_FAMILIES:
        return family
    if input_size <= SMALL_MAX_SIZE:
        return f"{family}_small"
    if input_size >= FULL_MIN_SIZE:
        return family
    raise ValueError(
        f"input_size={input_size} suits no {family} variant: '{family}_small' takes up to "
        f"{SMALL_MAX_SIZE} px and '{family}' from {FULL_MIN_SIZE} px; resize images into one of those ranges"
    )
