"""Cluster grids of the report: the members nearest each large cluster's centre; all clusters at a glance."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from deepcluster.report.picture import Picture, save_figure
from deepcluster.report.thumbnails import ThumbnailCache

_DPI = 100
_BACKGROUND = 255  # gaps between thumbnails, and empty places of a row


def cluster_summary(
    labels: np.ndarray, true_labels: np.ndarray | None = None, class_names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One dict per cluster, largest first (ties: smaller id): ``cluster`` (id), ``size``, ``dominant_class``
    (most frequent true class, ties: smaller class; None without true labels), ``class_name`` (its name from
    ``class_names``, else the class id as text; None without), ``purity`` (share of the cluster's images with
    a true label that are in the dominant class; None without) and ``labelled`` (images with a true label).

    ``true_labels`` [N] go with ``labels`` [N] row by row; negative true labels count as unknown.
    """
    labels = _ids(labels, "labels")
    ids, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    dominant = np.full(len(ids), -1, dtype=np.int64)
    top = np.zeros(len(ids), dtype=np.int64)
    labelled = np.zeros(len(ids), dtype=np.int64)
    if true_labels is not None:
        truth = _ids(true_labels, "true_labels")
        if truth.shape != labels.shape:
            raise ValueError(f"true_labels: {truth.shape[0]} values for {labels.shape[0]} cluster labels")
        known = truth >= 0
        if np.any(known):
            classes, class_of = np.unique(truth[known], return_inverse=True)
            pairs, counts = np.unique(inverse[known] * len(classes) + class_of, return_counts=True)
            pair_cluster, pair_class = pairs // len(classes), pairs % len(classes)
            order = np.lexsort((pair_class, -counts, pair_cluster))  # per cluster: largest count, then class
            first = order[np.r_[True, pair_cluster[order][1:] != pair_cluster[order][:-1]]]
            dominant[pair_cluster[first]] = classes[pair_class[first]]
            top[pair_cluster[first]] = counts[first]
            labelled = np.bincount(inverse[known], minlength=len(ids))
    rows = []
    for position in np.lexsort((ids, -sizes)):
        has_class = labelled[position] > 0
        class_id = int(dominant[position]) if has_class else None
        rows.append(
            {
                "cluster": int(ids[position]),
                "size": int(sizes[position]),
                "dominant_class": class_id,
                "class_name": _class_name(class_id, class_names) if class_id is not None else None,
                "purity": float(top[position] / labelled[position]) if has_class else None,
                "labelled": int(labelled[position]),
            }
        )
    return rows


def cluster_grids(
    labels: np.ndarray,
    indices: np.ndarray,
    embed: Callable[[np.ndarray], np.ndarray],
    thumbs: ThumbnailCache,
    out_dir: Path,
    n_clusters: int = 20,
    per_cluster: int = 36,
    true_labels: np.ndarray | None = None,
    class_names: list[str] | None = None,
    max_members: int = 512,
    seed: int = 0,
    folder: str = "clusters",
) -> list[Picture]:
    """One PNG grid per cluster, for the ``n_clusters`` largest clusters (largest first, ties: smaller id).

    ``labels`` [N] are the cluster ids and ``indices`` [N] the source index of each row. Of each cluster, up
    to ``max_members`` members drawn with ``np.random.default_rng(seed)`` are embedded
    (``embed(source_indices)`` -> float [n, D]), L2-normalised and ordered by distance to their mean; the
    ``per_cluster`` nearest are drawn left to right, top to bottom in ``out_dir/folder/cluster_<id>.png``.
    Returns the Pictures in that order (paths relative to ``out_dir``).
    """
    labels, indices = _rows(labels, indices)
    for name, value in (
        ("n_clusters", n_clusters),
        ("per_cluster", per_cluster),
        ("max_members", max_members),
    ):
        if value < 1:
            raise ValueError(f"{name} {value}: must be at least 1")
    summary = cluster_summary(labels, true_labels, class_names)[:n_clusters]
    members_of = _members(labels, indices)
    rng = np.random.default_rng(seed)
    pictures = []
    for row in summary:
        cluster = row["cluster"]
        members = members_of(cluster)
        sample = members if len(members) <= max_members else rng.choice(members, max_members, replace=False)
        sample = np.sort(sample)
        nearest = sample[_centre_order(embed, sample)][:per_cluster]
        tiles = thumbs.get(nearest)
        columns = int(np.ceil(np.sqrt(len(tiles))))
        rows = int(np.ceil(len(tiles) / columns))
        canvas, gap = _canvas(rows, columns, thumbs.size)
        for place, tile in enumerate(tiles):
            _place(canvas, tile, place // columns, place % columns, gap)
        relative = f"{folder}/cluster_{cluster}.png"
        save_figure(_image_figure(canvas), Path(out_dir) / relative, dpi=_DPI)
        caption = (
            f"The {len(nearest)} images nearest the cluster's centre in the network's feature space, nearest "
            "first (left to right, top to bottom)"
        )
        if len(sample) < len(members):
            caption += f"; centre and distances from {len(sample):,} members drawn at random"
        caption += "."
        if row["dominant_class"] is not None:
            caption += f" Dominant true class: {row['class_name']}, {_purity_text(row)}."
        pictures.append(
            Picture(title=f"Cluster {cluster} ({_count(row['size'])})", path=relative, caption=caption)
        )
    return pictures


def all_clusters_overview(
    labels: np.ndarray,
    indices: np.ndarray,
    thumbs: ThumbnailCache,
    out_dir: Path,
    per_row: int = 10,
    clusters_per_picture: int = 25,
    true_labels: np.ndarray | None = None,
    class_names: list[str] | None = None,
    seed: int = 0,
    folder: str = "clusters",
) -> list[Picture]:
    """Every cluster (largest first, ties: smaller id) as one row of up to ``per_row`` random members, its
    id, size and (with ``true_labels``) dominant class and purity written at the row's left;
    ``clusters_per_picture`` rows per PNG, written to ``out_dir/folder/overview_<n>.png``. Returns the
    Pictures in order."""
    labels, indices = _rows(labels, indices)
    for name, value in (("per_row", per_row), ("clusters_per_picture", clusters_per_picture)):
        if value < 1:
            raise ValueError(f"{name} {value}: must be at least 1")
    summary = cluster_summary(labels, true_labels, class_names)
    members_of = _members(labels, indices)
    rng = np.random.default_rng(seed)
    chosen = []
    for row in summary:
        members = members_of(row["cluster"])
        chosen.append(np.sort(rng.choice(members, min(per_row, len(members)), replace=False)))
    n_pictures = -(-len(summary) // clusters_per_picture)
    digits = max(2, len(str(n_pictures)))
    pictures = []
    for number in range(n_pictures):
        start, stop = number * clusters_per_picture, min(len(summary), (number + 1) * clusters_per_picture)
        tiles = thumbs.get(np.concatenate(chosen[start:stop]))
        canvas, gap = _canvas(stop - start, per_row, thumbs.size)
        texts = []
        used = 0
        for line, position in enumerate(range(start, stop)):
            for column in range(len(chosen[position])):
                _place(canvas, tiles[used], line, column, gap)
                used += 1
            texts.append(_row_text(summary[position]))
        figure = _image_figure(canvas)
        axes = figure.axes[0]
        step = thumbs.size + gap
        for line, text in enumerate(texts):
            # 8 points, less when the lines would not fit the row's height (small thumbnails)
            fontsize = min(8.0, thumbs.size * 72 / _DPI / (1.3 * (text.count("\n") + 1)))
            y = gap + line * step + thumbs.size / 2
            axes.text(-2 * gap - 2, y, text, ha="right", va="center", fontsize=fontsize)
        relative = f"{folder}/overview_{number + 1:0{digits}d}.png"
        save_figure(figure, Path(out_dir) / relative, dpi=_DPI)
        if n_pictures == 1:
            title = f"All {len(summary)} clusters"
        else:
            title = f"All clusters, {start + 1}-{stop} of {len(summary)}"
        caption = (
            f"One row per cluster, largest first: up to {per_row} members drawn at random; at the left the "
            "cluster id and size" + (", dominant true class and purity." if true_labels is not None else ".")
        )
        pictures.append(Picture(title=title, path=relative, caption=caption))
    return pictures


def _ids(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"{name}: expected a 1-D array of integers, got {array.dtype} {array.shape}")
    return array.astype(np.int64)


def _rows(labels: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, indices = _ids(labels, "labels"), _ids(indices, "indices")
    if labels.shape != indices.shape:
        raise ValueError(
            f"labels and indices: {labels.shape[0]} cluster labels for {indices.shape[0]} indices"
        )
    return labels, indices


def _members(labels: np.ndarray, indices: np.ndarray) -> Callable[[int], np.ndarray]:
    """A lookup cluster id -> source indices of its members (one sort of the labels for all clusters)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]

    def members(cluster: int) -> np.ndarray:
        lo, hi = (
            np.searchsorted(sorted_labels, cluster, "left"),
            np.searchsorted(sorted_labels, cluster, "right"),
        )
        return indices[order[lo:hi]]

    return members


def _centre_order(embed: Callable[[np.ndarray], np.ndarray], sample: np.ndarray) -> np.ndarray:
    """Positions of ``sample`` ordered by the distance of their L2-normalised embeddings to the mean one."""
    features = np.asarray(embed(sample), dtype=np.float64)
    if features.ndim != 2 or features.shape[0] != len(sample):
        raise ValueError(f"embed: expected features of shape [{len(sample)}, D], got {features.shape}")
    finite = np.all(np.isfinite(features), axis=1)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = np.where(finite[:, None], features / np.maximum(norms, 1e-12), 0.0)
    centre = unit[finite].mean(axis=0) if np.any(finite) else np.zeros(features.shape[1])
    distance = np.where(finite, np.linalg.norm(unit - centre, axis=1), np.inf)  # broken features go last
    return np.argsort(distance, kind="stable")


def _canvas(rows: int, columns: int, size: int) -> tuple[np.ndarray, int]:
    """A background image for rows x columns tiles of ``size`` pixels with thin gaps, and the gap."""
    gap = max(1, size // 32)
    shape = (rows * (size + gap) + gap, columns * (size + gap) + gap, 3)
    return np.full(shape, _BACKGROUND, dtype=np.uint8), gap


def _place(canvas: np.ndarray, tile: np.ndarray, row: int, column: int, gap: int) -> None:
    size = tile.shape[0]
    top, left = gap + row * (size + gap), gap + column * (size + gap)
    canvas[top : top + size, left : left + size] = tile


def _image_figure(canvas: np.ndarray) -> Figure:
    """A figure that shows ``canvas`` pixel for pixel, without axes."""
    height, width = canvas.shape[:2]
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.imshow(canvas, interpolation="nearest")
    axes.set_axis_off()
    return figure


def _class_name(class_id: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= class_id < len(class_names):
        return str(class_names[class_id])
    return str(class_id)


def _count(n: int) -> str:
    return f"{n:,} image{'s' if n != 1 else ''}"


def _purity_text(row: dict[str, Any]) -> str:
    text = f"purity {row['purity']:.1%}"
    if row["labelled"] < row["size"]:
        text += f" of its {row['labelled']:,} images with a true label"
    return text


def _row_text(row: dict[str, Any]) -> str:
    text = f"cluster {row['cluster']}\n{_count(row['size'])}"
    if row["dominant_class"] is not None:
        name = row["class_name"]
        name = (
            f"class {name}" if name == str(row["dominant_class"]) else name
        )  # a bare number reads as a count
        text += f"\n{name}: {row['purity']:.0%}"
    return text
