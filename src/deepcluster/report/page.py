"""The report page: one self-contained HTML5 file (inline CSS, no script, no external resource) of sections.

Every text that comes from a run (titles, captions, paths, config, table cells) is HTML-escaped here; only a
section's `html` is inserted as is, and it is meant to be made with the helpers of this module.
"""

from __future__ import annotations

import html as html_lib
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from deepcluster.evaluate.results import format_cell
from deepcluster.report.picture import Picture

Column = str | tuple[str, str]
"""A table column: a row key, or ``(row key, header)``."""

STYLE = """
:root { --fg: #1d1f21; --muted: #5f6368; --line: #dadce0; --bg: #ffffff; --panel: #f6f8fa; --accent: #1a73e8; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1200px; padding: 1rem 1.5rem 3rem; color: var(--fg); background: var(--bg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
h1 { font-size: 1.6rem; margin: 0.5rem 0 0.25rem; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin: 2rem 0 0.5rem; padding-bottom: 0.25rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.25rem 0 0.5rem; }
a { color: var(--accent); }
.generated, .note, figcaption, .muted { color: var(--muted); }
.generated { margin: 0 0 1rem; font-size: 0.9rem; }
nav.toc { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 0.5rem 1rem; }
nav.toc h2 { border: 0; margin: 0.25rem 0; font-size: 1rem; }
nav.toc ol { margin: 0.25rem 0; padding-left: 1.5rem; columns: 2 16rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1rem; margin: 1rem 0; }
figure { margin: 0; padding: 0.5rem; border: 1px solid var(--line); border-radius: 6px; background: var(--bg); }
figure img { display: block; width: 100%; height: auto; image-rendering: auto; }
figcaption { font-size: 0.85rem; margin-top: 0.4rem; }
figcaption strong { color: var(--fg); display: block; }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 0.75rem;
  overflow-x: auto; font-size: 0.85rem; line-height: 1.35; }
.table-wrap { overflow-x: auto; margin: 0.5rem 0 1rem; }
table { border-collapse: collapse; font-size: 0.88rem; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; margin: 0.5rem 0 1rem; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
details { margin: 0.5rem 0 1rem; }
summary { cursor: pointer; color: var(--accent); }
@media print { nav.toc { display: none; } figure { break-inside: avoid; } }
"""


@dataclass
class Section:
    """One part of the page: a heading, an optional note (text), trusted HTML, then a grid of pictures."""

    title: str
    pictures: list[Picture] = field(default_factory=list)
    html: str = ""
    note: str = ""


def _escape(value: Any) -> str:
    return html_lib.escape(str(value), quote=True)


def _src(path: str) -> str:
    """A relative file path as an escaped URL for a src/href attribute (spaces, '#', '?', '%' and the like
    percent-encoded; a Windows separator becomes '/')."""
    return _escape(quote(str(path).replace("\\", "/"), safe="/"))


def _anchor(title: str, index: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]
    return f"s{index}-{slug}" if slug else f"s{index}"


def _figure(picture: Picture) -> str:
    src = _src(picture.path)
    caption = f"<strong>{_escape(picture.title)}</strong>"
    if picture.caption:
        caption += f"{_escape(picture.caption)}"
    return (
        f'<figure><a href="{src}"><img src="{src}" alt="{_escape(picture.title)}" loading="lazy" '
        f'decoding="async"></a><figcaption>{caption}</figcaption></figure>'
    )


def render_page(title: str, sections: list[Section], generated: str = "") -> str:
    """The whole HTML5 page: title, `generated` line, a table of contents linking to each section, then the
    sections (note, HTML, pictures as captioned figures in a responsive grid). All text is escaped."""
    anchors = [_anchor(section.title, i + 1) for i, section in enumerate(sections)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="deepcluster report">',
        f"<title>{_escape(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{_escape(title)}</h1>",
    ]
    if generated:
        parts.append(f'<p class="generated">{_escape(generated)}</p>')
    parts.append("</header>")
    if sections:
        items = "".join(
            f'<li><a href="#{anchor}">{_escape(section.title)}</a></li>'
            for anchor, section in zip(anchors, sections, strict=True)
        )
        parts.append(f'<nav class="toc" aria-label="Contents"><h2>Contents</h2><ol>{items}</ol></nav>')
    parts.append("<main>")
    for anchor, section in zip(anchors, sections, strict=True):
        parts.append(f'<section id="{anchor}">')
        parts.append(f"<h2>{_escape(section.title)}</h2>")
        if section.note:
            parts.append(f'<p class="note">{_escape(section.note)}</p>')
        if section.html:
            parts.append(section.html)
        if section.pictures:
            parts.append('<div class="grid">')
            parts.extend(_figure(picture) for picture in section.pictures)
            parts.append("</div>")
        parts.append("</section>")
    parts += ["</main>", "</body>", "</html>", ""]
    return "\n".join(parts)


def config_block(yaml_text: str) -> str:
    """The run's configuration as an escaped preformatted block."""
    return f'<pre class="config"><code>{_escape(yaml_text.rstrip())}</code></pre>'


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _cell(value: Any, float_format: str = ".4f") -> str:
    if isinstance(value, (list, tuple)) and value and all(_is_number(item) or item is None for item in value):
        return ", ".join(format_cell(item, float_format) for item in value)
    return format_cell(value, float_format)


def table_html(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[Column] | None = None, float_format: str = ".4f"
) -> str:
    """An HTML table of `rows` (mappings; a missing key shows '-'), cells formatted like the terminal tables
    (`format_cell`: floats with `float_format`, None and NaN as '-'); numeric columns are right-aligned.
    `columns` (keys, or ``(key, header)`` pairs) default to every key of the rows in first-seen order."""
    rows = [row for row in rows if isinstance(row, Mapping)]
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(str(key) for key in row))
        columns = list(seen)
    if not rows or not columns:
        return '<p class="muted">(nothing to show)</p>'
    keys = [column if isinstance(column, str) else column[0] for column in columns]
    headers = [column if isinstance(column, str) else column[1] for column in columns]
    numeric = [all(_is_number(row.get(key)) or row.get(key) is None for row in rows) for key in keys]
    numeric = [
        flag and any(_is_number(row.get(key)) for row in rows)
        for flag, key in zip(numeric, keys, strict=True)
    ]

    def cls(i: int) -> str:
        return ' class="num"' if numeric[i] else ""

    head = "".join(f"<th{cls(i)}>{_escape(header)}</th>" for i, header in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{cls(i)}>{_escape(_cell(row.get(key), float_format))}</td>" for i, key in enumerate(keys)
        )
        + "</tr>"
        for row in rows
    )
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


_METRIC_NAMES = {
    "n_samples": "images",
    "n_clusters": "clusters used",
    "n_classes": "true classes",
    "nmi": "NMI",
    "adjusted_nmi": "adjusted NMI",
    "ari": "adjusted Rand index",
    "hungarian_accuracy": "accuracy, one-to-one cluster-to-class map",
    "majority_accuracy": "accuracy, each cluster as its majority class",
}


def _measure_name(key: str) -> str:
    """A readable name for a score key of `deepcluster evaluate` (knn20, probe_conv3, probe_best)."""
    if match := re.fullmatch(r"knn(\d+)", key):
        return f"k-NN top-1, k = {match.group(1)}"
    if key == "probe_best":
        return "linear probe top-1, best layer"
    if key.startswith("probe_"):
        return f"linear probe top-1, {key[len('probe_') :]}"
    return key


def _facts(pairs: Sequence[tuple[str, Any]]) -> str:
    items = "".join(f"<dt>{_escape(name)}</dt><dd>{_escape(_cell(value))}</dd>" for name, value in pairs)
    return f'<dl class="facts">{items}</dl>' if items else ""


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, np.generic))


def evaluation_block(evaluation: dict, max_clusters: int = 50) -> str:
    """HTML of what `deepcluster evaluate` wrote to evaluation.json: what was evaluated, the k-NN and linear-probe
    scores of each network side by side, the run's clusters against the true classes (metrics, the
    `max_clusters` largest clusters with their dominant class, stability across epochs) and the settings.
    Parts that are missing or malformed are left out; unknown top-level scalars are listed with the facts."""
    if not isinstance(evaluation, Mapping):
        return '<p class="muted">(no evaluation results)</p>'
    parts: list[str] = []
    known = ("target", "arch", "input_size", "data")
    facts = [(key.replace("_", " "), evaluation[key]) for key in known if key in evaluation]
    skip = {*known, "settings", "networks", "clustering", "checkpoint_report", "output"}
    facts += [(str(key), value) for key, value in evaluation.items() if key not in skip and _scalar(value)]
    parts.append(_facts(facts))
    if isinstance(evaluation.get("checkpoint_report"), str):
        parts.append(f'<p class="note">{_escape(evaluation["checkpoint_report"])}</p>')

    networks = evaluation.get("networks")
    if isinstance(networks, Mapping):
        networks = {str(name): scores for name, scores in networks.items() if isinstance(scores, Mapping)}
    if networks:
        measures: dict[str, None] = {}
        for scores in networks.values():
            measures.update(dict.fromkeys(str(key) for key in scores))
        rows = [
            {"measure": _measure_name(m), **{name: scores.get(m) for name, scores in networks.items()}}
            for m in measures
        ]
        parts.append("<h3>Features: k-NN and linear probes on the true classes</h3>")
        parts.append(table_html(rows, ["measure", *networks]))
        if "random_init" in networks:
            parts.append(
                '<p class="note">random_init: the same architecture at random initialisation, evaluated the '
                "same way (the baseline the learned features should beat).</p>"
            )

    if "clustering" in evaluation:
        clustering = evaluation.get("clustering")
        if not isinstance(clustering, Mapping):
            parts.append('<p class="note">No clustering metrics: the run has no true labels.</p>')
        else:
            metrics = clustering.get("metrics")
            if isinstance(metrics, Mapping) and metrics:
                rows = [{"metric": _METRIC_NAMES.get(str(k), str(k)), "value": v} for k, v in metrics.items()]
                parts.append("<h3>Last labels against the true classes</h3>")
                parts.append(table_html(rows, ["metric", "value"]))
            clusters = clustering.get("clusters")
            if isinstance(clusters, list) and clusters:
                shown = [row for row in clusters if isinstance(row, Mapping)][: max(0, max_clusters)]
                parts.append("<h3>Clusters and their dominant class</h3>")
                if len(clusters) > len(shown):
                    parts.append(f'<p class="note">The {len(shown)} largest of {len(clusters)} clusters.</p>')
                columns: list[Column] = [
                    ("cluster", "cluster"),
                    ("size", "images"),
                    ("dominant", "dominant class"),
                    ("purity", "purity"),
                ]
                extra = [
                    key
                    for row in shown
                    for key in row
                    if key not in {"cluster", "size", "dominant", "purity"}
                ]
                parts.append(table_html(shown, columns + list(dict.fromkeys(extra))))
            stability = clustering.get("stability")
            if isinstance(stability, list) and stability:
                rows = [row for row in stability if isinstance(row, Mapping)]
                values = [row.get("nmi_prev") for row in rows if _is_number(row.get("nmi_prev"))]
                values = [float(v) for v in values if math.isfinite(float(v))]
                summary = "Stability: NMI between consecutive epochs' labels"
                if values:
                    summary += f" (last {values[-1]:.4f}, mean {sum(values) / len(values):.4f})"
                table = table_html(rows, [("epoch", "epoch"), ("nmi_prev", "NMI to previous epoch")])
                parts.append(f"<details><summary>{_escape(summary)}</summary>{table}</details>")

    settings = evaluation.get("settings")
    if isinstance(settings, Mapping) and settings:
        rows = [{"setting": str(key), "value": value} for key, value in settings.items() if key != "target"]
        parts.append(f"<details><summary>Evaluation settings</summary>{table_html(rows)}</details>")
    return "\n".join(part for part in parts if part)


def write_page(path: Path, html: str) -> None:
    """Write `html` to `path` atomically (UTF-8, temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(html)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class _ImageSources(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            for name, value in attrs:
                if name == "src" and value is not None:
                    self.sources.append(unquote(value))

    handle_startendtag = handle_starttag


def referenced_images(html: str) -> list[str]:
    """The `src` of every <img> of `html`, in page order, unescaped and percent-decoded (the file paths)."""
    parser = _ImageSources()
    parser.feed(html)
    parser.close()
    return parser.sources
