"""The layers (taps) and channels the report looks at: names, channel counts, defaults and checks.

Every function takes any ``nn.Module`` with a ``tap_names`` attribute (a property on our backbones, or a
method) and a ``forward_taps(x, names)`` method; the checks themselves live in
:mod:`deepcluster.models.backbone`, next to :meth:`~deepcluster.models.backbone.Backbone.forward_taps`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from deepcluster.config import ConfigError
from deepcluster.models.backbone import check_channel_indices, check_tap_names, count_tap_channels


def tap_names(backbone: nn.Module) -> list[str]:
    """The backbone's tap names, shallowest first (``tap_names`` is a property on our backbones)."""
    names = backbone.tap_names
    return list(names() if callable(names) else names)


def check_tap(backbone: nn.Module, tap: str) -> None:
    """ValueError when ``tap`` is not one of the backbone's taps (the message lists them)."""
    check_tap_names([tap], tap_names(backbone), getattr(backbone, "arch", None))


def _input_size(backbone: nn.Module, input_size: int | None = None) -> int:
    size = input_size if input_size is not None else getattr(backbone, "input_size", None)
    if size is None:
        raise ValueError("input_size is needed: the backbone has no input_size attribute")
    return int(size)


def tap_channels(backbone: nn.Module, tap: str, input_size: int | None = None) -> int:
    """Number of channels of ``tap`` (one forward pass of a blank image); ValueError for an unknown tap."""
    check_tap(backbone, tap)
    return count_tap_channels(backbone, tap, _input_size(backbone, input_size))


def check_channels(
    backbone: nn.Module, tap: str, channels: Sequence[int], input_size: int | None = None
) -> int:
    count = tap_channels(backbone, tap, input_size)
    check_channel_indices(tap, channels, count)
    return count


def default_taps(backbone: nn.Module) -> list[str]:
    """The middle and the last tap of ``backbone`` (``conv3`` and ``conv5`` for AlexNet), shallowest first."""
    names = tap_names(backbone)
    if not names:
        raise ValueError("the backbone has no taps")
    picked = [names[(len(names) - 1) // 2], names[-1]]
    return list(dict.fromkeys(picked))


def default_channels(backbone: nn.Module, tap: str, n: int, seed: int) -> list[int]:
    """``n`` distinct channels of ``tap`` (all of them if it has fewer), drawn with ``seed``, sorted."""
    count = tap_channels(backbone, tap)
    rng = np.random.default_rng(seed)
    picked = rng.choice(count, size=min(max(int(n), 0), count), replace=False)
    return sorted(int(c) for c in picked)


def check_taps(
    backbone: nn.Module, taps: dict[str, list[int]], arch: str, input_size: int | None = None
) -> None:
    """ConfigError for the first ``--tap`` choice that ``backbone`` (of ``arch``) does not have.

    ``taps`` maps a layer to the channels chosen there (empty: channels drawn later); a layer must be one
    of the backbone's taps and every channel in ``0..count - 1``. ``input_size`` None: the backbone's own.
    """
    for tap, given in taps.items():
        if tap not in tap_names(backbone):
            raise ConfigError(
                f"--tap {tap}: no such layer in {arch}; choose from {', '.join(tap_names(backbone))}"
            )
        count = tap_channels(backbone, tap, input_size)
        if any(not 0 <= c < count for c in given):
            raise ConfigError(f"--tap {tap}:{','.join(map(str, given))}: {tap} has channels 0..{count - 1}")
