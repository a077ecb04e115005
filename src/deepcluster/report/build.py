"""Build a run's report: `RUN/report/index.html` with its PNGs, from what the run directory holds.

Curves come from metrics.jsonl; cluster grids from labels.csv, the trained network (to order each cluster's
images by their distance to its centroid) and cached thumbnails; filters from the checkpoint. Only the images
shown are ever read: a report of a large run decodes a few thousand images, not the data set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF

from deepcluster.config import TrainConfig, load_config
from deepcluster.data.decode import square_image
from deepcluster.data.sources import ImageSource, open_source
from deepcluster.data.views import ClusterView
from deepcluster.models.loading import LoadedModel, load_model
from deepcluster.report.activations import top_activating_images
from deepcluster.report.ascent import gradient_ascent_grid
from deepcluster.report.curves import plot_curves
from deepcluster.report.filters import first_layer_filters
from deepcluster.report.grids import all_clusters_overview, cluster_grids
from deepcluster.report.options import ReportOptions
from deepcluster.report.page import Section, config_block, evaluation_block, render_page, write_page
from deepcluster.report.picture import Picture
from deepcluster.report.similar import similar_pictures
from deepcluster.report.taps import check_taps, default_channels, default_taps
from deepcluster.report.thumbnails import ThumbnailCache
from deepcluster.storage import RunDir, RunLock, open_run_dir


def _decode(source: ImageSource, indices: np.ndarray, resize: int, input_size: int) -> torch.Tensor:
    """uint8 [n, 3, resize, resize] of the source's images `indices` (as the run decoded them)."""
    out = torch.empty((len(indices), 3, resize, resize), dtype=torch.uint8)
    for row, index in enumerate(indices):
        out[row] = TF.pil_to_tensor(square_image(source.load(int(index)), resize, input_size))
    return out


def _embedder(
    backbone: torch.nn.Module,
    source: ImageSource,
    view: ClusterView,
    resize: int,
    input_size: int,
    batch: int,
) -> Callable[[np.ndarray], np.ndarray]:
    """source indices -> the trained network's embedding of those images (cluster view, eval mode)."""

    @torch.no_grad()
    def embed(indices: np.ndarray) -> np.ndarray:
        backbone.eval()
        parts = [
            backbone(view(_decode(source, indices[start : start + batch], resize, input_size)))
            .float()
            .numpy()
            for start in range(0, len(indices), batch)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)

    return embed


def build_report(
    run_dir: str | Path, options: ReportOptions | None = None, trust_checkpoint: bool = False
) -> Path:
    """(Re)build `run_dir/report/index.html` and its pictures, holding the run's lock; returns the page's path.
    Thumbnails made by an earlier build are reused. `trust_checkpoint` loads a checkpoint of an older format
    (whose full unpickle can run code)."""
    options = options or ReportOptions()
    run = open_run_dir(run_dir, "report")
    with RunLock(run.root, "report"):
        return _build(run, options, trust_checkpoint)


def configured_clusters(config: TrainConfig) -> int | None:
    """The clusters the run asked for (`cluster.k`), which the size histogram counts empty ones against; None
    for PIC, which finds its own number."""
    return None if config.cluster.algorithm == "pic" else config.cluster.k


def _build(run: RunDir, options: ReportOptions, trust_checkpoint: bool) -> Path:
    config = load_config(run.config)  # what the report shows needs no method's own section
    model = None  # loaded first: a refused checkpoint stops the build before anything is written
    if run.labels_csv.is_file() and run.has_checkpoint():
        model = load_model(run.root, trusted=trust_checkpoint)
    out = run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    history = run.read_history()
    sections = [
        Section(
            "Training curves",
            plot_curves(history, run.last_epoch_labels(), out, n_clusters=configured_clusters(config)),
            note=f"{len(history)} epoch(s) of {config.method}; numbers per epoch from metrics.jsonl.",
        )
    ]
    if model is not None:
        sections += _network_sections(run, config, out, options, model, trust_checkpoint)
    evaluation = run.read_evaluation()
    if evaluation is not None:
        sections.append(Section("Evaluation", html=evaluation_block(evaluation)))
    sections.append(Section("Configuration", html=config_block(run.config.read_text())))
    page = out / "index.html"
    title = f"{config.method} run {run.root.name}"
    write_page(page, render_page(title, sections, generated=time.strftime("%Y-%m-%d %H:%M")))
    return page


def _network_sections(
    run: RunDir, config: TrainConfig, out: Path, options: ReportOptions, model: LoadedModel, trusted: bool
) -> list[Section]:
    """Cluster grids and filter pictures: they need the labels and the trained network."""
    table = run.read_labels()
    labels = table.labels[:, 0]
    source = open_source(config.data.data, split=config.data.split)
    true = None if source.labels is None else np.asarray(source.labels)[table.indices]
    backbone = model.backbone.eval()
    view = ClusterView(model.input_size, model.mean, model.std)
    thumbs = ThumbnailCache(out / "thumbnails", source, options.thumbnail_size)
    embed = _embedder(backbone, source, view, model.resize, model.input_size, options.batch_size)
    for stale in (out / "clusters").glob("*.png"):  # an earlier build may have shown other clusters
        stale.unlink()
    grids = cluster_grids(
        labels,
        table.indices,
        embed,
        thumbs,
        out,
        n_clusters=options.clusters,
        per_cluster=options.per_cluster,
        true_labels=true,
        class_names=source.classes,
        max_members=options.members,
        seed=options.seed,
    )
    k = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=k)
    sections = [
        Section(
            f"The {len(grids)} largest clusters",
            grids,
            note=f"{k} clusters, {int((sizes > 0).sum())} non-empty; each grid starts with the images nearest the "
            "cluster's centroid (trained network's embedding, L2-normalised).",
        )
    ]
    if k <= options.overview_max_k:
        overview = all_clusters_overview(
            labels,
            table.indices,
            thumbs,
            out,
            true_labels=true,
            class_names=source.classes,
            seed=options.seed,
        )
        sections.append(
            Section("Every cluster", overview, note="Random members of every cluster, largest first.")
        )
    sections.append(
        Section(
            "What the filters see",
            _filter_pictures(backbone, source, table.indices, view, thumbs, model, out, options),
        )
    )
    if options.similar > 0:
        pictures = similar_pictures(
            run.root, thumbs, out, options.similar, options.similar_k, options.seed, trusted
        )
        sections.append(
            Section(
                "Find similar",
                pictures,
                note="Nearest neighbours in the run's search index "
                "(RUN/index/, also used by deepcluster search and duplicates).",
            )
        )
    return sections


def _filter_pictures(
    backbone: torch.nn.Module,
    source: ImageSource,
    indices: np.ndarray,
    view: ClusterView,
    thumbs: ThumbnailCache,
    model: LoadedModel,
    out: Path,
    options: ReportOptions,
) -> list[Picture]:
    pictures = [first_layer_filters(backbone, out / "filters" / "conv1.png", "filters/conv1.png")]
    rng = np.random.default_rng(options.seed)
    sample = np.sort(rng.choice(indices, size=min(options.activation_sample, len(indices)), replace=False))
    images = _decode(source, sample, model.resize, model.input_size)
    pictures_of_sample = thumbs.get(sample)
    chosen = options.taps or {tap: [] for tap in default_taps(backbone)}
    check_taps(backbone, chosen, model.arch, model.input_size)
    for tap, given in chosen.items():
        channels = list(given) or default_channels(backbone, tap, options.channels, options.seed)
        rel = f"filters/top_{tap}.png"
        pictures.append(
            top_activating_images(
                backbone,
                images,
                view,
                pictures_of_sample,
                tap,
                channels,
                out / rel,
                rel,
                batch_size=options.batch_size,
            )
        )
        if options.gradient_ascent:
            rel = f"filters/ascent_{tap}.png"
            pictures.append(
                gradient_ascent_grid(
                    backbone,
                    tap,
                    channels,
                    model.input_size,
                    out / rel,
                    rel,
                    steps=options.gradient_steps,
                    seed=options.seed,
                )
            )
    return pictures
