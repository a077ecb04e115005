"""The report's "find similar" section: a few of the run's images drawn at random, each followed by its nearest
images in the run's search index (RUN/index/, built by `deepcluster.use.search` when missing or stale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepcluster.report.grids import _canvas, _image_figure, _place
from deepcluster.report.picture import Picture, save_figure
from deepcluster.report.thumbnails import ThumbnailCache
from deepcluster.use.run import load

_DPI = 100


def similar_pictures(
    run_root: Path,
    thumbs: ThumbnailCache,
    out: Path,
    queries: int = 6,
    k: int = 8,
    seed: int = 0,
    trust_checkpoint: bool = False,
) -> list[Picture]:
    """One PNG (out/similar/similar.png): a row per query, the query at the left, then its `k` nearest other
    images, most similar first, with the cosine similarity written under each."""
    index = load(run_root, device="cpu", trust_checkpoint=trust_checkpoint).index()
    n = len(index)
    if queries < 1 or n < 2:
        return []
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(queries, n), replace=False))
    hits = index.search_vectors(np.asarray(index.vectors[rows], dtype=np.float32), min(k, n - 1) + 1)
    canvas, gap = _canvas(len(rows), 1 + min(k, n - 1), thumbs.size)
    texts = []
    for line, row in enumerate(rows):
        others = [
            (place, int(found)) for place, found in enumerate(hits.rows[line]) if found not in (row, -1)
        ]
        others = others[: min(k, n - 1)]
        tiles = thumbs.get(np.asarray([index.indices[row], *(index.indices[f] for _, f in others)]))
        for column, tile in enumerate(tiles):
            _place(canvas, tile, line, column, gap)
            if column:
                texts.append((line, column, float(hits.scores[line, others[column - 1][0]])))
    figure = _image_figure(canvas)
    axes, step = figure.axes[0], thumbs.size + gap
    for line, column, score in texts:
        axes.text(
            gap + column * step + thumbs.size / 2,
            gap + line * step + thumbs.size - 2,
            f"{score:.2f}",
            ha="center",
            va="bottom",
            fontsize=7,
            color="white",
            bbox={"facecolor": "black", "alpha": 0.55, "pad": 1, "linewidth": 0},
        )
    relative = "similar/similar.png"
    save_figure(figure, out / relative, dpi=_DPI)
    caption = (
        f"Each row: one of {len(rows)} images of the run drawn at random (left), then its nearest images in the "
        f"run's index of {n:,} ({index.kind}), most similar first; the number is the cosine similarity of the "
        "whitened embeddings. `deepcluster search RUN IMAGE` finds them for any image."
    )
    return [Picture(title="Nearest neighbours", path=relative, caption=caption)]
