"""A trained run's search index (RUN/index/): `deepcluster index`, `search` (a training image finds itself first),
`duplicates` (a planted exact copy and a planted resized JPEG copy are found, nothing else), the index kept while
it fits and rebuilt when it does not, and bad inputs."""

from __future__ import annotations

import csv
import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deepcluster
from deepcluster.api import train
from deepcluster.cli import main
from deepcluster.report.build import ReportOptions, build_report
from deepcluster.storage import load_checkpoint, save_checkpoint
from synthetic import small_config

IMAGES = 60


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepCluster run over 60 smooth random colour images (48 px) and two planted copies."""
    root = tmp_path_factory.mktemp("search")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((48, 48), Image.BICUBIC).save(folder / f"img_{i:03d}.png")
    (folder / "copy_exact.png").write_bytes((folder / "img_007.png").read_bytes())
    with Image.open(folder / "img_011.png") as original:
        original.resize((32, 32), Image.BICUBIC).save(folder / "copy_resized.jpg", quality=85)
    train(small_config(folder, root / "run", run={"epochs": 2}))
    return root / "run"


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([*args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_duplicates_finds_the_planted_copies_and_nothing_else(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(["duplicates", str(run_dir), "--threshold", "0.9", "-q"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    groups: dict[str, set[str]] = {}
    for row in rows:
        groups.setdefault(row["group"], set()).add(Path(row["image"]).name)
        assert float(row["similarity"]) >= 0.9 and row["size"] == "2"
    assert sorted(map(sorted, groups.values())) == [
        ["copy_exact.png", "img_007.png"],
        ["copy_resized.jpg", "img_011.png"],
    ]
    saved = tmp_path / "dups.csv"
    code, out, _ = _run(["duplicates", str(run_dir), "--threshold", "0.9", "--out", str(saved), "-q"], capsys)
    assert code == 0 and "2 group(s) of near-duplicates (4 images)" in out
    assert list(csv.DictReader(saved.open())) == rows
    code, out, _ = _run(["duplicates", str(run_dir), "--threshold", "0.995", "-q"], capsys)
    names = sorted(Path(row["image"]).name for row in csv.DictReader(io.StringIO(out)))
    assert names == ["copy_exact.png", "img_007.png"]  # the resized copy is close, not that close


def test_a_training_image_finds_itself_first(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = deepcluster.load(run_dir)
    query = run_dir.parent / "images" / "img_003.png"
    hits = run.search([query, Image.open(query)], k=5)
    assert hits.rows.shape == (2, 5) and hits.queries[0] == str(query)
    for q in range(2):
        assert Path(hits.names[q][0]).name == "img_003.png" and hits.scores[q, 0] > 0.999
        assert np.all(np.diff(hits.scores[q]) <= 0)  # best first
    index = run.index()
    assert hits.indices[0, 0] == index.indices[index.row_of(hits.names[0][0])]
    assert run.search([query], k=IMAGES + 10).rows[0, -1] == -1  # more than the run holds: padded
    page = tmp_path / "similar.html"
    name = index.names[5]  # a run's image by its name, as labels.csv gives it
    code, out, _ = _run(
        ["search", str(run_dir), name, str(query), "--k", "3", "--html", str(page), "-q"], capsys
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == name and lines[1].split()[2] == name  # first neighbour: itself
    assert lines[4] == str(query) and lines[5].split()[2].endswith("img_003.png")
    html = page.read_text()
    assert html.count('<div class="row">') == 2 and html.count("data:image/png;base64,") == 2 * 4


def test_the_index_is_kept_while_it_fits_and_rebuilt_when_not(
    run_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="deepcluster")
    code, out, _ = _run(["index", str(run_dir)], capsys)
    assert code == 0 and f"{IMAGES + 2} images indexed (flat" in out
    folder = run_dir / "index"
    built = (folder / "index.faiss").stat().st_mtime_ns
    caplog.clear()
    assert deepcluster.load(run_dir).index().kind == "flat"
    assert (folder / "index.faiss").stat().st_mtime_ns == built and "building" not in caplog.text

    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[: len(data) // 2])  # truncated
    assert len(deepcluster.load(run_dir).index()) == IMAGES + 2
    assert "building the search index" in caplog.text and "damaged" in caplog.text

    vectors = folder / "vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:-100])
    caplog.clear()
    assert deepcluster.load(run_dir).index().vectors.shape[0] == IMAGES + 2
    assert "damaged" in caplog.text

    caplog.clear()
    ivf = deepcluster.load(run_dir).index("ivf")
    assert ivf.kind == "ivf" and "another kind" in caplog.text

    copy = tmp_path / "run"  # the network trains on: another checkpoint, so another index
    shutil.copytree(run_dir, copy)
    state = load_checkpoint(copy / "checkpoints" / "last.pt")
    first = next(iter(state["model"]))
    state["model"][first] = state["model"][first] * 1.5
    save_checkpoint(copy / "checkpoints" / "last.pt", state)
    caplog.clear()
    before = np.load(folder / "vectors.npy")
    after = deepcluster.load(copy).index("ivf")
    assert "trained on since" in caplog.text and not np.allclose(after.vectors, before, atol=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "RUN", "no_such_image.png"], "no_such_image.png: no such image file"),
        (["search", "RUN", "img_003.png", "--k", "0"], "--k 0"),
        (["duplicates", "RUN", "--threshold", "1.5"], "--threshold 1.5"),
        (["duplicates", "RUN", "--out", "groups.txt"], "ending in .csv"),
        (["index", "MISSING"], "no such run directory"),
    ],
)
def test_bad_inputs_are_named(
    run_dir: Path, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(run_dir) if a == "RUN" else str(tmp_path / "nothing") if a == "MISSING" else a for a in args]
    code, _, err = _run(args, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_the_report_shows_nearest_neighbours_from_the_index(run_dir: Path) -> None:
    page = build_report(run_dir, ReportOptions(similar=3, similar_k=4)).read_text()
    assert "Find similar" in page and "similar/similar.png" in page
    with Image.open(run_dir / "report" / "similar" / "similar.png") as picture:
        assert picture.height > 3 * 64 and picture.width > 5 * 64  # 3 rows of 1 + 4 thumbnails
    assert (run_dir / "index" / "index.json").is_file()
    assert "Find similar" not in build_report(run_dir, ReportOptions(similar=0)).read_text()
