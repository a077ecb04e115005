"""Training curves of a run: loss, clustering objective, label stability, agreement with the truth, cluster sizes.

Every figure is drawn from the per-epoch records of metrics.jsonl. Records may lack keys (epochs without a label
update have no clustering keys) or hold None / NaN (no previous labels, no true labels, an empty sub-level); such
points are left out, and a figure with no point left is not drawn at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepcluster.report.picture import Picture, save_figure

FIGSIZE = (5.0, 3.0)
DPI = 100

Series = tuple[str, list[int], list[float]]
"""(legend label, epochs, values) of one line."""


def _number(value: Any) -> float | None:
    """`value` as a finite float, or None for None, NaN, infinities, booleans and anything that is no number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _epochs(history: Sequence[Any]) -> list[int]:
    """The epoch of every record: its `epoch` when that is a whole number, else its position in the history."""
    epochs = []
    for position, record in enumerate(history):
        epoch = _number(record.get("epoch")) if isinstance(record, dict) else None
        epochs.append(int(epoch) if epoch is not None and epoch == int(epoch) else position)
    return epochs


def series(history: Sequence[Any], key: str, label: str | None = None) -> Series:
    """The epochs and finite values of `key` over the records that hold one."""
    epochs, values = [], []
    for epoch, record in zip(_epochs(history), history, strict=True):
        value = _number(record.get(key)) if isinstance(record, dict) else None
        if value is not None:
            epochs.append(epoch)
            values.append(value)
    return (label or key, epochs, values)


def _new_axes(title: str, ylabel: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    axes = figure.subplots()
    axes.set_title(title, fontsize=10)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.tick_params(labelsize=8)
    return figure, axes


def _epoch_axis(axes: Axes, lines: Sequence[Series]) -> None:
    """Label the x axis "epoch" with whole-number ticks (one tick, centred, when a single epoch is drawn)."""
    axes.set_xlabel("epoch")
    epochs = {epoch for line in lines for epoch in line[1]}
    if len(epochs) == 1:
        (epoch,) = epochs
        axes.set_xlim(epoch - 0.5, epoch + 0.5)
        axes.set_xticks([epoch])
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _plot(axes: Axes, line: Series, **style: Any) -> list[Any]:
    label, epochs, values = line
    marker = "o" if len(epochs) <= 60 else None  # markers show single points; they would clutter long runs
    return axes.plot(epochs, values, marker=marker, markersize=3, linewidth=1.5, label=label, **style)


def _line_figure(
    title: str, ylabel: str, lines: Sequence[Series], ylim: tuple[float, float] | None = None
) -> Figure:
    figure, axes = _new_axes(title, ylabel)
    for line in lines:
        _plot(axes, line)
    _epoch_axis(axes, lines)
    if ylim is not None:
        axes.set_ylim(*ylim)
    if len(lines) > 1:
        axes.legend(fontsize=8)
    return figure


def _twin_figure(
    title: str,
    left: Sequence[Series],
    left_label: str,
    right: Series,
    right_label: str,
    counts: bool = False,
) -> Figure:
    """Lines on the left axis and one more line, in other units or on another scale, on a right axis; with
    `counts`, both axes start at 0 and the right one has whole-number ticks. The legend goes below the plot."""
    figure, axes = _new_axes(title, left_label)
    handles = []
    for line in left:
        handles += _plot(axes, line)
    other = axes.twinx()
    other.tick_params(labelsize=8)
    other.set_ylabel(right_label)
    handles += _plot(other, right, color="tab:red", linestyle="--")
    if counts:
        axes.set_ylim(bottom=0)
        top = max(1.0, max(right[2]) * 1.1)
        other.set_ylim(-0.04 * top, top)  # a line at 0 stays visible above the axis
        other.yaxis.set_major_locator(MaxNLocator(integer=True))
    _epoch_axis(axes, [*left, right])
    labels = [handle.get_label() for handle in handles]
    axes.legend(
        handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(handles)
    )
    return figure


def _has_points(*lines: Series) -> bool:
    return any(line[1] for line in lines)


def _span(lines: Sequence[Series]) -> str:
    epochs = sorted({epoch for line in lines for epoch in line[1]})
    if not epochs:
        return ""
    return f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}"


def _label_column(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """The first head's labels as int64 [N] (negative or non-finite ids dropped) and the number of heads."""
    array = np.asarray(labels)
    heads = int(array.shape[1]) if array.ndim == 2 else 1
    if heads == 0 or array.size == 0:
        return np.zeros(0, dtype=np.int64), heads
    column = array[:, 0] if array.ndim == 2 else array.reshape(-1)
    if np.issubdtype(column.dtype, np.floating):
        column = column[np.isfinite(column)]
    try:
        column = column.astype(np.int64)
    except (TypeError, ValueError):
        return np.zeros(0, dtype=np.int64), heads
    return column[column >= 0], heads


def _size_histogram(labels: np.ndarray, n_clusters: int | None) -> tuple[Figure, str] | None:
    column, heads = _label_column(labels)
    if column.size == 0:
        return None
    k = max(int(column.max()) + 1, int(n_clusters or 0))
    sizes = np.bincount(column, minlength=k)
    empty = int((sizes == 0).sum())
    title = f"Cluster sizes of the last labels: {k} clusters, {empty} empty"
    figure, axes = _new_axes(title, "clusters")
    low, high = int(sizes.min()), int(sizes.max())
    if low == high:
        bins: Any = [low - 0.5, high + 0.5]
    else:
        bins = min(40, high - low + 1)
    counts, _, _ = axes.hist(sizes, bins=bins, color="tab:blue", edgecolor="white", linewidth=0.5)
    nonzero = counts[counts > 0]
    if nonzero.size and nonzero.max() / nonzero.min() >= 20:
        axes.set_yscale("log")
    mean = column.size / k
    axes.axvline(mean, color="tab:gray", linestyle="--", linewidth=1, label=f"uniform ({mean:.1f})")
    axes.legend(fontsize=8)
    axes.set_xlabel("images per cluster")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if low == high:  # one bar: leave room either side so it reads as a bar, not as the whole plot
        margin = max(2.0, 0.2 * low)
        axes.set_xlim(low - margin, high + margin)
    if axes.get_yscale() == "linear":
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    head = f" (first of {heads} heads)" if heads > 1 else ""
    spread = f"every cluster holds {low}" if low == high else f"sizes {low} to {high}"
    caption = (
        f"How many clusters hold how many images in the last labels{head}: {column.size} images in {k} "
        f"clusters, {empty} empty; {spread}, a uniform split would give {mean:.1f} each."
    )
    return figure, caption


def plot_curves(
    history: list[dict],
    last_labels: np.ndarray | None,
    out_dir: Path,
    folder: str = "curves",
    n_clusters: int | None = None,
) -> list[Picture]:
    """Draw the training curves of `history` (the records of metrics.jsonl) and a histogram of the cluster sizes
    of `last_labels` ([N], or [N, heads]: the first head) as PNGs under ``out_dir/folder``.

    `n_clusters` (the configured k), when given, counts clusters no image holds in the histogram. Figures
    without data are skipped. Returns the pictures drawn, paths relative to `out_dir` ("curves/loss.png").
    """
    history = [record for record in history if isinstance(record, dict)]
    pictures: list[Picture] = []

    def save(figure: Figure, name: str, title: str, caption: str) -> None:
        relative = f"{folder}/{name}" if folder else name
        save_figure(figure, Path(out_dir) / relative, dpi=DPI)
        pictures.append(Picture(title, relative, caption))

    loss = series(history, "loss", "training loss")
    if _has_points(loss):
        caption = f"Mean loss of the network on its cluster targets over each epoch ({_span([loss])})."
        save(_line_figure("Training loss", "loss", [loss]), "loss.png", "Training loss", caption)

    kmeans = series(history, "kmeans_loss", "k-means loss")
    kmeans_sub = series(history, "kmeans_loss_sub", "sub-level k-means loss (mean)")
    if _has_points(kmeans, kmeans_sub):
        title = "k-means loss"
        if _has_points(kmeans) and _has_points(kmeans_sub):
            figure = _twin_figure(title, [kmeans], "k-means loss (top level)", kmeans_sub, "sub-level loss")
            caption = "The k-means objective of the top level (left axis) and the mean of the sub-level ones"
        else:
            line = kmeans if _has_points(kmeans) else kmeans_sub
            figure = _line_figure(title, "k-means loss", [line])
            caption = "The k-means objective"
        caption += f" at each label update ({_span([kmeans, kmeans_sub])}); lower is tighter clusters."
        save(figure, "kmeans_loss.png", title, caption)

    sinkhorn = series(history, "sinkhorn_loss", "Sinkhorn loss")
    if _has_points(sinkhorn):
        caption = (
            "Cross-entropy of the network's predictions against the Sinkhorn-Knopp equipartitioned labels, "
            f"mean over heads, at each label update ({_span([sinkhorn])})."
        )
        save(
            _line_figure("Sinkhorn loss", "cross-entropy", [sinkhorn]),
            "sinkhorn_loss.png",
            "Sinkhorn loss",
            caption,
        )

    previous = series(history, "nmi_prev", "NMI to previous labels")
    if _has_points(previous):
        title = "NMI to the previous labels"
        caption = (
            "Normalised mutual information between each label update and the one before it: how stable the "
            f"clusters are ({_span([previous])}; 1 = unchanged)."
        )
        save(_line_figure(title, "NMI", [previous], ylim=(0.0, 1.02)), "nmi_prev.png", title, caption)

    truth = [
        series(history, "nmi_true", "NMI"),
        series(history, "ari_true", "ARI"),
        series(history, "knn_true", "k-NN accuracy"),
    ]
    if _has_points(*truth):
        title = "Agreement with the true labels"
        caption = (
            "NMI and adjusted Rand index of the cluster labels (first head) against the true classes, and the "
            "weighted k-NN accuracy (k 20, leave-one-out) of the embedding on a fixed sample of the images "
            f"({_span(truth)})."
        )
        lines = [line for line in truth if line[1]]
        lowest = min(min(line[2]) for line in lines)
        figure = _line_figure(title, "score", lines, ylim=(min(0.0, lowest - 0.02), 1.02))
        save(figure, "truth.png", title, caption)

    sizes = [series(history, "smallest", "smallest cluster"), series(history, "largest", "largest cluster")]
    empty = series(history, "n_empty", "empty clusters")
    if _has_points(*sizes, empty):
        title = "Cluster sizes per epoch"
        lines = [line for line in sizes if line[1]]
        if lines and empty[1]:
            figure = _twin_figure(title, lines, "images in a cluster", empty, "empty clusters", counts=True)
        elif lines:
            figure = _line_figure(title, "images in a cluster", lines)
        else:
            figure = _line_figure(title, "empty clusters", [empty])
        caption = (
            "The smallest and largest cluster (images) and the clusters left empty by the assignment "
            f"(before any re-seeding), at each label update ({_span([*sizes, empty])})."
        )
        save(figure, "cluster_sizes.png", title, caption)

    if last_labels is not None:
        drawn = _size_histogram(last_labels, n_clusters)
        if drawn is not None:
            figure, caption = drawn
            save(figure, "cluster_histogram.png", "Cluster sizes of the last labels", caption)
    return pictures
