"""Using a trained run on real images: `embed` and `assign` throughput and peak memory, and where copies of an
image sit among the other images (the duplicate threshold).

For each data set (Imagenette 224 px, CIFAR-10 32 px, from ../shared/datasets): a short run (the default
method, `--train-images` of the training split, `--minutes` of training), then `deepcluster embed` and
`deepcluster assign` of the whole training split as subprocesses (wall time, images per second, the child's
peak RSS; the start-up, measured on 64 images, is given apart). Then copies: `--copies` training images outside
the run's subset, each copied five ways (half size, JPEG quality 50, half size + JPEG 75, centre crop 90 %,
brightness +15 %), embedded with `deepcluster.load(run).embed` and whitened as the run's search index whitens
them; printed: the cosine of each kind of copy to its original, the cosine of each indexed image to its nearest
other image, and at a few thresholds the share of copies found and the pairs of distinct images that pass.

    python benchmarks/use.py [--sets imagenette cifar10] [--train-images 2000] [--minutes 2] [--copies 300]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

import deepcluster
from deepcluster.cluster.preprocess import l2_normalize
from deepcluster.data.sources import open_source
from deepcluster.engine.device import machine_description
from deepcluster.use.images import batches_of_source

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
FILES = {"imagenette": "imagenette_jpegbytes.npz", "cifar10": "cifar10_jpegbytes.npz"}
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def subset(archive: Path, rows: np.ndarray, out: Path) -> None:
    """An image-bytes .npz (the shared layout) of `rows` of the training split."""
    with np.load(archive) as data:
        jpeg, off = data["jpeg_train"], data["off_train"]
        parts = [jpeg[off[i] : off[i + 1]] for i in rows]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        np.savez(out, jpeg_train=np.concatenate(parts), off_train=offsets, y_train=data["y_train"][rows],
                 files_train=data["files_train"][rows], classes=data["classes"])  # fmt: skip


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd`; (wall seconds, the child's peak RSS in GB)."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {child.stderr.read()[-2000:]}")
    return wall, usage.ru_maxrss / 1024**2


def copies_of(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size

    def jpeg(img: Image.Image, quality: int) -> Image.Image:
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    half = image.resize((max(1, w // 2), max(1, h // 2)), Image.BICUBIC)
    cw, ch = round(w * 0.9), round(h * 0.9)
    return {
        "half size": half,
        "JPEG q50": jpeg(image, 50),
        "half + JPEG q75": jpeg(half, 75),
        "crop 90%": image.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)),
        "brightness +15%": ImageEnhance.Brightness(image).enhance(1.15),
    }


def quantiles(values: np.ndarray) -> str:
    q = np.quantile(values, [0.01, 0.05, 0.5])
    return f"1% {q[0]:.3f}, 5% {q[1]:.3f}, median {q[2]:.3f}"


def at_five_pairs(indexed: np.ndarray, base: np.ndarray, copied: dict[str, np.ndarray]) -> str:
    """Share of each kind of copy found at the threshold that lets 5 pairs of distinct indexed images pass."""
    sims = indexed @ indexed.T
    t = float(np.sort(sims[np.triu_indices(len(indexed), 1)])[-5])
    found = " / ".join(f"{np.mean(np.sum(base * c, axis=1) >= t):.0%}" for c in copied.values())
    return f"threshold {t:.3f}: {found}"


def duplicates(run_dir: Path, archive: Path, rows: np.ndarray) -> list[str]:
    run = deepcluster.load(run_dir)
    index = run.index()
    vectors = np.asarray(index.vectors)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.max(axis=1)
    with np.load(archive) as data:
        jpeg, off = data["jpeg_train"], data["off_train"]
        originals = [Image.open(io.BytesIO(jpeg[off[i] : off[i + 1]].tobytes())).convert("RGB") for i in rows]
    raw_base = run.embed(originals)
    raw_copies = {
        kind: run.embed([copies_of(img)[kind] for img in originals]) for kind in copies_of(originals[0])
    }
    base = index.project(raw_base)
    lines = [
        f"- nearest other image among the {len(index):,} indexed: median {np.median(nearest):.3f}, 99% "
        f"{np.quantile(nearest, 0.99):.3f}, max {nearest.max():.3f}"
    ]
    upper = np.triu(sims, 1)
    found: dict[str, np.ndarray] = {}
    for kind, raw in raw_copies.items():
        found[kind] = np.sum(base * index.project(raw), axis=1)
        lines.append(f"- {kind}: cosine to the original {quantiles(found[kind])}")
    every = np.concatenate(list(found.values()))
    for t in THRESHOLDS:
        pairs = int((upper >= t).sum())
        lines.append(f"- threshold {t}: {np.mean(every >= t):.1%} of the copies found; {pairs} pair(s) of "
                     f"distinct indexed images pass")  # fmt: skip
    # the same copies when the index only centred the embeddings (raw embeddings of the indexed images again)
    source = open_source(run.config.data.data, split=run.config.data.split)
    batches = batches_of_source(source, run.resize, int(run.config.data.input_size), run.batch_size)
    indexed = np.concatenate([run.embed_batch(batch.images) for batch in batches])
    mean = indexed.mean(axis=0)
    centred = {kind: l2_normalize(raw - mean) for kind, raw in raw_copies.items()}
    kinds = " / ".join(raw_copies)
    lines.append(f"- found ({kinds}) at 5 passing pairs, centred only: "
                 f"{at_five_pairs(l2_normalize(indexed - mean), l2_normalize(raw_base - mean), centred)}")  # fmt: skip
    whitened = {kind: index.project(raw) for kind, raw in raw_copies.items()}
    lines.append(f"- the same, whitened as the index does: {at_five_pairs(vectors, base, whitened)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(FILES), choices=list(FILES))
    parser.add_argument(
        "--parts", nargs="+", default=["throughput", "copies"], choices=["throughput", "copies"]
    )
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--copies", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="folder for the runs, kept and reused (default: temporary)")
    args = parser.parse_args()
    print(machine_description("auto"))
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.sets:
            measure(name, args, work)


def measure(name: str, args: argparse.Namespace, work: Path) -> None:
    cli = [sys.executable, "-m", "deepcluster"]
    archive = args.shared / FILES[name]
    with np.load(archive) as data:
        n = len(data["off_train"]) - 1
    order = np.random.default_rng(args.seed).permutation(n)
    train_rows, copy_rows = np.sort(order[: args.train_images]), order[-args.copies :]
    run = work / f"{name}-run"
    if not (run / "labels.csv").is_file():
        subset(archive, train_rows, work / f"{name}.npz")
        train = ["train", "--data", str(work / f"{name}.npz"), "--out", str(run), "--epochs", "50"]
        train += ["--max-minutes", str(args.minutes), "--no-progress", "-q", "--set", "run.report=false"]
        wall, rss = timed([*cli, *train])
        print(
            f"\n## {name}: a run of {args.train_images} training images, {wall:.0f} s, peak RSS {rss:.2f} GB"
        )
    else:
        print(f"\n## {name}: the run in {run}")
    if "throughput" in args.parts:
        subset(archive, np.arange(64), work / f"{name}-64.npz")
        for what, out in (("embed", "e.npy"), ("assign", "a.csv")):
            start_wall, _ = timed([*cli, what, str(run), "--data", str(work / f"{name}-64.npz"), "--out",
                                   str(work / f"small-{out}"), "--no-progress", "-q"])  # fmt: skip
            wall, rss = timed([*cli, what, str(run), "--data", str(archive), "--out", str(work / out),
                               "--no-progress", "-q"])  # fmt: skip
            print(f"- {what} {n:,} images: {wall:.1f} s, {n / wall:.0f} images/s ({n / (wall - start_wall):.0f} "
                  f"after the {start_wall:.1f} s start-up of 64 images), peak RSS {rss:.2f} GB")  # fmt: skip
    if "copies" in args.parts:
        print(*duplicates(run, archive, copy_rows), sep="\n")


if __name__ == "__main__":
    main()
