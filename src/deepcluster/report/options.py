"""What `deepcluster report` shows, declared once: each setting with its default, help, flag and check (the
command line's flags and their checks come from here; `report.build.build_report` takes it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deepcluster.config.options import ConfigError, option, positive


@dataclass
class ReportOptions:
    """What the report shows."""

    clusters: int = option(20, "largest clusters shown as grids", flag="--clusters", check=positive)
    per_cluster: int = option(
        36, "images per cluster grid, nearest the centroid first", flag="--per-cluster", check=positive
    )
    members: int = option(
        128,
        "members of a cluster embedded to find its centroid and order the grid (the network's cost of a grid)",
    )
    overview_max_k: int = option(100, "a page of every cluster when k is at most this")
    thumbnail_size: int = option(64, "side of a thumbnail in pixels")
    activation_sample: int = option(1000, "images searched for the ones that excite each chosen channel most")
    channels: int = option(
        8,
        "channels shown per deeper layer (drawn at random with the seed, unless --tap names them)",
        flag="--channels",
        check=positive,
    )
    taps: dict[str, list[int]] | None = option(
        None,
        'layers and channels to show, e.g. {"conv5": [3, 17]} (--tap, read by `parse_taps`); None: a middle '
        "and the last conv layer",
    )
    gradient_ascent: bool = option(
        False, "also the paper's gradient-ascent filter pictures (slow)", flag="--gradient-ascent"
    )
    gradient_steps: int = option(100, "steps of each gradient-ascent picture")
    similar: int = option(
        6,
        "images shown with their nearest neighbours (default 6; 0: none; the run's search index is built when "
        "it has none that fits, at the cost of embedding every image once)",
        flag="--similar",
    )
    similar_k: int = option(8, "nearest neighbours shown with each of those images")
    seed: int = option(0, "random seed (the channels and the images drawn)", flag="--seed")
    batch_size: int = option(128, "batch of the network's passes")


def parse_taps(items: Sequence[str] | None) -> dict[str, list[int]] | None:
    """The --tap values (LAYER or LAYER:C,C,...) as `ReportOptions.taps`; None when none is given."""
    taps: dict[str, list[int]] = {}
    for item in items or []:
        layer, _, channels = item.partition(":")
        try:
            taps[layer] = [int(c) for c in channels.split(",") if c.strip()]
        except ValueError:
            raise ConfigError(f"--tap {item}: expected LAYER or LAYER:C,C,... with channel numbers") from None
    return taps or None
