"""`deepcluster search --html`: one self-contained page (thumbnails inline as PNG data) with a row per query:
the query, then its nearest images with their similarity and name."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from deepcluster.storage import atomic_write_text
from deepcluster.use.search import Hits

THUMBNAIL = 112
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.row { display: flex; gap: 8px; margin-bottom: 1.2em; align-items: flex-start; }
figure { margin: 0; width: SIZEpx; font-size: 11px; overflow-wrap: anywhere; }
figure.query { border-right: 3px solid #888; padding-right: 8px; }
img { width: SIZEpx; height: SIZEpx; object-fit: contain; background: #eee; display: block; }
""".replace("SIZE", str(THUMBNAIL))


def _data_url(image: Image.Image | None) -> str:
    if image is None:
        return ""
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL * 2, THUMBNAIL * 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(image: Image.Image | None, caption: str, css: str = "") -> str:
    src = _data_url(image)
    img = f'<img src="{src}" alt="{html.escape(caption)}">' if src else "<div>(unreadable)</div>"
    return f'<figure class="{css}">{img}<figcaption>{html.escape(caption)}</figcaption></figure>'


def _safe(load: Callable[[], Image.Image]) -> Image.Image | None:
    try:
        return load()
    except Exception:  # a picture that cannot be shown is left blank, never fatal
        return None


def write_search_page(
    path: str | os.PathLike[str],
    title: str,
    hits: Hits,
    query_images: list[Callable[[], Image.Image]],
    indexed_image: Callable[[int], Image.Image],
) -> None:
    """Write the page of `hits` to `path` (atomically): `query_images[q]()` gives query q's picture and
    `indexed_image(i)` the picture of the data source's image i."""
    rows = []
    for q, query in enumerate(hits.queries):
        cells = [_figure(_safe(query_images[q]), f"query: {query}", "query")]
        for place, (row, score) in enumerate(zip(hits.rows[q], hits.scores[q], strict=True)):
            if row < 0:
                break
            source_index = int(hits.indices[q, place])
            caption = f"{place + 1}. {score:.3f} {hits.names[q][place]}"
            cells.append(_figure(_safe(lambda i=source_index: indexed_image(i)), caption))
        rows.append(f'<div class="row">{"".join(cells)}</div>')
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        "<p>Each row: the query, then the most similar images of the run (cosine similarity of the embeddings, "
        f"best first).</p>{''.join(rows)}</body></html>\n"
    )
    atomic_write_text(Path(path), page)
