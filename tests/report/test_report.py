"""The whole report of small runs: every method, with and without true labels, rebuilt from the CLI, and
rendered by headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcluster.api import train
from deepcluster.cli import main
from deepcluster.report.build import ReportOptions, build_report
from deepcluster.report.page import referenced_images
from synthetic import pattern_images, small_config, write_pattern_npz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = {"optim": {"epoch_size": 64}}


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("data") / "patterns.npz", n=128)


@pytest.fixture(scope="module")
def unlabelled_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat folder of images: no class sub-folders, so no true labels."""
    folder = tmp_path_factory.mktemp("flat")
    images, _ = pattern_images(96, seed=5)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def deepcluster_run(npz_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "deepcluster"
    train(small_config(npz_data, out, **FAST, run={"report": True}))
    return out


def _check_report(run: Path) -> str:
    """The page exists, and every image it references exists and is a valid PNG; returns the page."""
    page = run / "report" / "index.html"
    assert page.is_file()
    html = page.read_text()
    sources = referenced_images(html)
    assert sources, "the page shows no picture"
    for source in sources:
        path = page.parent / source
        assert path.is_file(), f"{source} is referenced but missing"
        assert path.read_bytes()[:8] == PNG_MAGIC, source
        with Image.open(path) as image:
            image.verify()
    return html


def test_training_builds_the_report_with_curves_grids_and_filters(deepcluster_run: Path) -> None:
    html = _check_report(deepcluster_run)
    sources = referenced_images(html)
    assert "curves/loss.png" in sources and "curves/truth.png" in sources
    assert any(s.startswith("clusters/cluster_") for s in sources)
    assert "filters/conv1.png" in sources and any(s.startswith("filters/top_") for s in sources)
    assert "purity" in html and "Configuration" in html


@pytest.mark.parametrize(
    ("method", "sections"),
    [
        ("sela", {"sela": {"heads": 2}}),
        ("deepercluster", {"deepercluster": {"super_clusters": 2}}),
        ("deepcluster-v2", {"deepcluster_v2": {"n_sets": 2, "n_small": 2, "hidden": 32}}),
        ("sela-v2", {"sela_v2": {"n_sets": 2, "n_small": 2, "hidden": 32}}),
    ],
)
def test_every_method_gets_a_report(npz_data: Path, tmp_path: Path, method: str, sections: dict) -> None:
    out = tmp_path / method
    config = small_config(npz_data, out, **FAST, **sections)
    config.method = method
    train(config)
    assert not (out / "report").exists()  # run.report is off in small_config
    page = build_report(out, ReportOptions(clusters=4, activation_sample=64, channels=2))
    html = _check_report(out)
    assert page == out / "report" / "index.html"
    if method in ("sela", "sela-v2"):
        assert "sinkhorn_loss" in html if method == "sela" else "curves/truth.png" in referenced_images(html)
    else:
        assert "curves/kmeans_loss.png" in referenced_images(html)


def test_a_label_transfer_run_gets_a_report(npz_data: Path, deepcluster_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "transfer"
    config = small_config(npz_data, out, **FAST, transfer={"labels": str(deepcluster_run / "labels.csv")})
    config.method = "transfer"
    train(config)
    build_report(out, ReportOptions(clusters=3, activation_sample=48, channels=2))
    html = _check_report(out)
    sources = referenced_images(html)
    assert "curves/loss.png" in sources and any(s.startswith("clusters/cluster_") for s in sources)


def test_a_run_without_true_labels_gets_a_report(unlabelled_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "flat"
    train(small_config(unlabelled_folder, out, **FAST))
    build_report(out, ReportOptions(clusters=3, activation_sample=48, channels=2))
    html = _check_report(out)
    sources = referenced_images(html)
    assert "curves/truth.png" not in sources and any(s.startswith("clusters/") for s in sources)
    assert "purity" not in html


def test_the_cli_rebuilds_the_report_reusing_the_thumbnails(
    deepcluster_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    thumbnails = sorted((deepcluster_run / "report" / "thumbnails").iterdir())
    assert thumbnails
    stamps = {path: path.stat().st_mtime_ns for path in thumbnails}
    assert main(["report", str(deepcluster_run), "--clusters", "3", "--channels", "2", "-q"]) == 0
    assert "index.html" in capsys.readouterr().out
    _check_report(deepcluster_run)
    assert {path: path.stat().st_mtime_ns for path in thumbnails} == stamps, "thumbnails were made again"
    grids = [
        s
        for s in referenced_images((deepcluster_run / "report" / "index.html").read_text())
        if s.startswith("clusters/cluster_")
    ]
    assert len(grids) == 3
    assert len(list((deepcluster_run / "report" / "clusters").glob("cluster_*.png"))) == 3, (
        "stale grids are removed"
    )
    assert main(["report", str(deepcluster_run / "missing")]) == 2
    assert main(["report", str(deepcluster_run), "--tap", "conv5:1,3", "--clusters", "2", "-q"]) == 0
    sources = referenced_images((deepcluster_run / "report" / "index.html").read_text())
    assert [s for s in sources if s.startswith("filters/top_")] == ["filters/top_conv5.png"]
    assert main(["report", str(deepcluster_run), "--tap", "conv9", "-q"]) == 2
    assert main(["report", str(deepcluster_run), "--tap", "conv5:100000", "-q"]) == 2


def test_headless_chromium_renders_curves_and_grids(deepcluster_run: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed (scripts/setup.sh installs Debian's chromium)"
    shot = tmp_path / "report.png"
    page = (deepcluster_run / "report" / "index.html").resolve()
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2400",
         f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2400, 1280)
    # Rendered pictures, not a blank page with broken-image icons: plenty of coloured pixels (curve lines,
    # coloured pattern thumbnails) and plenty of non-white ones.
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 40
    assert coloured.mean() > 0.01
    assert (pixels.mean(axis=2) < 200).mean() > 0.05
