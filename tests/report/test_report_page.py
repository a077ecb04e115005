"""The report's training curves (PNGs from metrics.jsonl) and its HTML page (escaping, pictures, evaluation)."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcluster.api import train
from deepcluster.evaluate.results import format_cell
from deepcluster.evaluate.runner import EvalConfig, evaluate
from deepcluster.report.curves import plot_curves
from deepcluster.report.page import (
    Section,
    config_block,
    evaluation_block,
    referenced_images,
    render_page,
    table_html,
    write_page,
)
from deepcluster.report.picture import Picture
from synthetic import small_config, write_pattern_npz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch DeepCluster run on labelled patterns, evaluated (k-NN only) into its evaluation.json."""
    root = tmp_path_factory.mktemp("report_page")
    data = write_pattern_npz(root / "patterns.npz", n=96)
    out = root / "run"
    train(small_config(data, out, run={"checkpoint_every": 0}))
    evaluate(EvalConfig(str(out), knn_ks=(5,), probe_epochs=0, baseline=False, progress=False))
    return out


def history_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_valid_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert 250 <= width <= 700 and 150 <= height <= 500, (path.name, image.size)  # about 5 x 3 in at 100 dpi


def names(pictures: list[Picture]) -> set[str]:
    return {Path(picture.path).name for picture in pictures}


class Tags(HTMLParser):
    """Every start tag with its attributes, the text, and whether non-void tags nest properly."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.starts if name == tag]


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    tags.close()
    assert not tags.errors and not tags.stack, (tags.errors, tags.stack)
    return tags


def test_curves_of_a_real_run_are_valid_pngs_under_the_folder(tiny_run: Path, tmp_path: Path) -> None:
    history = history_of(tiny_run)
    labels = np.load(tiny_run / "labels" / "epoch_001.npy")
    pictures = plot_curves(history, labels, tmp_path)
    assert names(pictures) == {
        "loss.png", "kmeans_loss.png", "nmi_prev.png", "truth.png", "cluster_sizes.png", "cluster_histogram.png",
    }  # fmt: skip
    for picture in pictures:
        assert picture.path.startswith("curves/") and picture.title and picture.caption
        assert_valid_png(tmp_path / picture.path)
    histogram = next(p for p in pictures if p.path.endswith("cluster_histogram.png"))
    sizes = np.bincount(labels)
    assert f"{len(labels)} images in {len(sizes)} clusters, 0 empty" in histogram.caption
    assert f"sizes {sizes.min()} to {sizes.max()}" in histogram.caption


def test_without_true_labels_there_is_no_truth_figure(tiny_run: Path, tmp_path: Path) -> None:
    history = [
        {**record, "nmi_true": None, "ari_true": None, "knn_true": None} for record in history_of(tiny_run)
    ]
    pictures = plot_curves(history, None, tmp_path, folder="plots")
    assert names(pictures) == {"loss.png", "kmeans_loss.png", "nmi_prev.png", "cluster_sizes.png"}
    assert not (tmp_path / "plots" / "truth.png").exists()
    assert all(picture.path.startswith("plots/") for picture in pictures)


def test_a_sela_history_gives_the_sinkhorn_figure_and_a_histogram_of_the_first_head(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "loss": 3.0 - e, "sinkhorn_loss": 2.5 - 0.1 * e, "n_empty": 0, "smallest": 20, "largest": 20,
         "nmi_prev": None if e == 0 else 0.5 + 0.1 * e, "nmi_true": None, "ari_true": None}
        for e in range(3)
    ]  # fmt: skip
    first = np.repeat(np.arange(4), [10, 20, 30, 40])
    labels = np.stack([first, np.arange(100) % 4, np.arange(100) % 5], axis=1)  # [N, 3 heads]
    pictures = plot_curves(history, labels, tmp_path)
    assert names(pictures) == {
        "loss.png",
        "sinkhorn_loss.png",
        "nmi_prev.png",
        "cluster_sizes.png",
        "cluster_histogram.png",
    }
    for picture in pictures:
        assert_valid_png(tmp_path / picture.path)
    histogram = next(p for p in pictures if p.path.endswith("cluster_histogram.png"))
    assert "first of 3 heads" in histogram.caption and "sizes 10 to 40" in histogram.caption


def test_one_epoch_and_broken_records_never_crash(tmp_path: Path) -> None:
    one = [{"epoch": 0, "loss": 2.0, "kmeans_loss": 50.0, "n_empty": 1, "smallest": 0, "largest": 9,
            "nmi_prev": None, "nmi_true": 0.3, "ari_true": None}]  # fmt: skip
    pictures = plot_curves(one, np.array([0, 0, 1, 3]), tmp_path / "one", n_clusters=5)
    assert names(pictures) == {
        "loss.png",
        "kmeans_loss.png",
        "truth.png",
        "cluster_sizes.png",
        "cluster_histogram.png",
    }
    histogram = next(p for p in pictures if p.path.endswith("cluster_histogram.png"))
    assert "4 images in 5 clusters, 2 empty" in histogram.caption  # ids 2 and 4 hold nothing

    deeper = [  # DeeperCluster: a sub-level loss, NaN when every super-cluster was too short
        {"epoch": 0, "loss": 4.0, "kmeans_loss": 10.0, "kmeans_loss_sub": math.nan, "nmi_prev": None},
        {"epoch": 1, "loss": math.nan},  # no label update this epoch, a diverged loss
        {"epoch": 2, "loss": 3.0, "kmeans_loss": 9.0, "kmeans_loss_sub": 2.0, "nmi_prev": 0.8},
        {"loss": "not a number", "smallest": None, "nmi_true": float("inf")},  # no epoch at all
        "not a record",
    ]
    pictures = plot_curves(deeper, np.zeros((0,), dtype=np.int64), tmp_path / "deeper")  # type: ignore[arg-type]
    assert names(pictures) == {"loss.png", "kmeans_loss.png", "nmi_prev.png"}
    for picture in pictures:
        assert_valid_png(tmp_path / "deeper" / picture.path)
    assert plot_curves([], None, tmp_path / "empty") == []
    assert not (tmp_path / "empty").exists()


def test_the_page_escapes_text_lists_every_picture_lazily_and_links_each_section(tmp_path: Path) -> None:
    pictures = [
        Picture("Loss <b>", "curves/loss.png", "caption with <i>tags</i> & ampersands"),
        Picture('Odd "name"', 'clusters/a b#c?d%e "q" <x>.png', "an awkward file name"),
    ]
    sections = [
        Section("Training <curves>", pictures[:1], note="note <u>"),
        Section("Clusters", pictures[1:], html="<p>trusted <em>html</em></p>"),
        Section("Config", html=config_block("model:\n  arch: <script>alert(1)</script>\n")),
    ]
    page = render_page("<script>alert('x')</script> run", sections, generated="2024-01-01 & later")
    tags = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert not tags.all("script") and not tags.all("link")
    assert "<script>alert('x')</script> run" in "".join(tags.text)  # shown as text, not run
    images = tags.all("img")
    assert len(images) == len(pictures)
    for attrs, picture in zip(images, pictures, strict=True):
        assert attrs["loading"] == "lazy" and attrs["decoding"] == "async"
        assert attrs["alt"] == picture.title
        assert not str(attrs["src"]).startswith(("http:", "https:", "//", "/"))
    assert referenced_images(page) == [picture.path for picture in pictures]
    assert len(tags.all("figure")) == len(tags.all("figcaption")) == 2
    ids = [attrs["id"] for attrs in tags.all("section")]
    links = [attrs["href"] for attrs in tags.all("a") if str(attrs["href"]).startswith("#")]
    assert len(ids) == 3 and len(set(ids)) == 3 and links == [f"#{i}" for i in ids]
    assert "<em>html</em>" in page and "note &lt;u&gt;" in page


def test_tables_format_numbers_like_the_terminal_and_escape_text() -> None:
    rows = [{"name": "<a>", "value": 0.123456, "count": 3}, {"name": "b", "value": math.nan, "extra": None}]
    html = table_html(rows)
    tags = parse(html)
    assert [text for text in tags.text if text.strip()] == [
        "name", "value", "count", "extra",
        "<a>", format_cell(0.123456), "3", "-",
        "b", "-", "-", "-",
    ]  # fmt: skip
    assert "&lt;a&gt;" in html
    assert len([attrs for attrs in tags.all("td") if attrs.get("class") == "num"]) == 4  # value and count
    assert "nothing to show" in table_html([])


def test_the_evaluation_block_renders_what_evaluate_wrote(tiny_run: Path) -> None:
    evaluation = json.loads((tiny_run / "evaluation.json").read_text())
    evaluation["from_the_future"] = {"nested": [1, 2]}  # unknown keys are ignored
    html = evaluation_block(evaluation)
    tags = parse(html)
    cells = [text for text in tags.text if text.strip()]
    assert "k-NN top-1, k = 5" in cells
    assert format_cell(evaluation["networks"]["trained"]["knn5"]) in cells
    assert format_cell(evaluation["clustering"]["metrics"]["nmi"]) in cells
    clusters = evaluation["clustering"]["clusters"]
    sizes = [str(row["size"]) for row in clusters]
    assert all(size in cells for size in sizes)
    rows = len(tags.all("tr"))
    assert rows >= len(clusters) + len(evaluation["clustering"]["metrics"]) + 1
    assert "from_the_future" not in html
    assert evaluation["arch"] in cells

    without_truth = {**evaluation, "clustering": None, "networks": {"trained": {"knn5": 0.5}, "odd": 3}}
    html = evaluation_block(without_truth)
    parse(html)
    assert "no true labels" in html and "0.5000" in html and "odd" not in html
    assert evaluation_block({}) == ""


def test_write_page_replaces_the_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "report" / "index.html"
    write_page(path, "<p>first</p>")
    write_page(path, "<p>second é</p>")
    assert path.read_text(encoding="utf-8") == "<p>second é</p>"
    assert [p.name for p in path.parent.iterdir()] == ["index.html"]  # no temporary file left


def test_a_whole_page_of_real_curves_references_only_existing_pngs(tiny_run: Path, tmp_path: Path) -> None:
    pictures = plot_curves(history_of(tiny_run), np.load(tiny_run / "labels" / "epoch_001.npy"), tmp_path)
    evaluation = json.loads((tiny_run / "evaluation.json").read_text())
    sections = [
        Section("Curves", pictures),
        Section("Evaluation", html=evaluation_block(evaluation)),
        Section("Configuration", html=config_block((tiny_run / "config.yaml").read_text())),
    ]
    write_page(tmp_path / "index.html", render_page(f"Run {tiny_run.name}", sections, generated="now"))
    page = (tmp_path / "index.html").read_text()
    parse(page)
    sources = referenced_images(page)
    assert sorted(sources) == sorted(picture.path for picture in pictures)
    for source in sources:
        assert_valid_png(tmp_path / source)
