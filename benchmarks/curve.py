"""Issue 29: what compute buys. Trains the default configuration on CIFAR-10's train split (50,000 images) with a
time budget, and measures the network every few minutes of training: k-NN on the test split and the NMI of the
run's labels, against minutes and steps, from the random initialisation (minute 0) to the end.

    nohup python benchmarks/curve.py --minutes 120 --every 10 > curve.log 2>&1 &   # the curve, in the background
    python benchmarks/curve.py --minutes 0.5 --every 0.2 --train-images 2000 --test-images 1000 --out /tmp/c
    python benchmarks/curve.py --plot-only --out benchmarks/results/curve-2026-12-07   # PNG and table again

Each point (one JSON line of PREFIX.jsonl, default benchmarks/results/curve-<date>, written as it comes):
  * knn_test: weighted k-NN (k=20, T=0.07, cosine) of the test split's images (queries; this is evaluation,
    not selection) among the train split's (memory), on the embedding, cluster view, eval mode;
  * nmi_labels: NMI of the run's current labels (first set) to the train split's true classes;
  * minutes: wall minutes since the training was started, less the time spent measuring (so they include
    decoding and label updates, as a user waits for them); steps: optimiser steps so far; epoch.
The first point is the random initialisation (the network built with seed --seed as the engine builds it, before
a first layer from the data, `model.first_conv=patches`, replaces its first filters) with the run's first labels,
the last the trained network with its final labels. Measuring happens in an `on_step` callback: eval mode, then
`nets.train()` again, the global RNGs (Python, NumPy, torch) saved and restored, so the run trains as it would
unmeasured (but run.max_minutes also counts the measuring). The budget is run.max_minutes =
--minutes (the engine plans the run to fit it). Then PREFIX.png (k-NN and NMI against minutes) and PREFIX.md
(a table, with the CPU line and precision).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import random
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepcluster import preset_config
from deepcluster.api import train
from deepcluster.cluster.knn import weighted_knn_accuracy
from deepcluster.cluster.metrics import nmi
from deepcluster.config import apply_overrides, parse_set
from deepcluster.data.decode import decode_images
from deepcluster.data.sources import open_source
from deepcluster.engine.device import machine_description
from deepcluster.methods import primary_labels
from deepcluster.models import build_backbone, channels_last
from deepcluster.seeding import seed_everything
from jpeg_archives import archive_rows
from machine import cpu_line

HERE = Path(__file__).resolve().parent
ARCHIVE = "cifar10_jpegbytes.npz"
SUBSET_SEED = 29


@contextlib.contextmanager
def rng_untouched(device: torch.device):
    """Python's, NumPy's and torch's global generators as they were before the block."""
    python, numpy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


@torch.no_grad()
def embed(net: torch.nn.Module, view, images: torch.Tensor, precision) -> np.ndarray:
    """The embedding of every image (cluster view, eval mode), float32."""
    net.eval()
    parts = []
    for start in range(0, images.shape[0], 512):
        x = channels_last(view(images[start : start + 512].to(precision.device)))
        with precision.autocast():
            parts.append(net(x).float().cpu().numpy())
    return np.concatenate(parts)


def initial_network(config) -> torch.nn.Module:
    """The run's random initialisation, built again as the engine builds it (seeded with the run's seed; the
    first filters random even where the run then sets them from the data)."""
    seed_everything(config.run.seed)
    model = config.model
    return build_backbone(model.arch, sobel=model.sobel, input_size=config.data.input_size)


class Curve:
    """The `on_step` callback: a point at the first step (the random init), then every `every` minutes."""

    def __init__(self, args: argparse.Namespace, jsonl: Path, header: dict) -> None:
        self.args, self.jsonl, self.header = args, jsonl, header
        self.started = time.perf_counter()
        self.measuring = 0.0
        self.steps = 0
        self.next_at = args.every
        self.trainer = None
        self.test: tuple[torch.Tensor, np.ndarray] | None = None

    def minutes(self) -> float:
        return (time.perf_counter() - self.started - self.measuring) / 60

    def __call__(self, trainer) -> None:
        self.steps += 1
        if self.trainer is None:
            self.trainer = trainer
            self.point(lambda: initial_network(trainer.config))
        if self.minutes() >= self.next_at:
            self.point(lambda: trainer.nets.backbone, steps=self.steps)
            while self.next_at <= self.minutes():
                self.next_at += self.args.every

    def test_images(self) -> tuple[torch.Tensor, np.ndarray]:
        """The test split (a seeded --test-images subset), decoded once as the run decodes its images."""
        if self.test is None:
            data = self.trainer.config.data
            source = open_source(str(Path(self.args.data_dir) / ARCHIVE), split="test")
            decoded = decode_images(source, data.resize, progress=False, inner_size=data.input_size)
            truth = np.asarray(source.labels)[decoded.indices]
            rows = np.arange(len(truth))
            if self.args.test_images:
                rows = np.sort(
                    np.random.default_rng(SUBSET_SEED).permutation(len(truth))[: self.args.test_images]
                )
            self.test = decoded.images[torch.as_tensor(rows)], truth[rows]
        return self.test

    def point(self, network, steps: int = 0, labels: np.ndarray | None = None, final: bool = False) -> dict:
        """Measure the network `network()` gives; append the point to the JSONL."""
        began = time.perf_counter()
        trainer = self.trainer
        precision, data = trainer.precision, trainer.data
        with rng_untouched(precision.device):
            net = network().to(precision.device).to(memory_format=torch.channels_last)
            test_images, test_truth = self.test_images()
            memory = embed(net, trainer.cluster_view, data.images, precision)
            queries = embed(net, trainer.cluster_view, test_images, precision)
            if not final:
                trainer.nets.train()  # the modes the engine set at the epoch's start
        knn = weighted_knn_accuracy(memory, data.true_labels, queries, test_truth, k=20, temperature=0.07)
        labels = trainer.state.labels if labels is None else labels
        if not self.header.get("written"):
            self.header.update(precision=precision.name, machine=machine_description(precision.name))
            self.write({**self.header, "train_images": len(data.true_labels), "test_images": len(test_truth)})
            self.header["written"] = True
        record = {
            "kind": "point",
            "minutes": 0.0 if steps == 0 else self.minutes(),
            "wall_minutes": (time.perf_counter() - self.started) / 60,
            "steps": steps,
            "epoch": trainer.state.epoch if not final else len(trainer.state.history),
            "knn_test": knn,
            "nmi_labels": nmi(data.true_labels, primary_labels(np.asarray(labels))),
            "final": final,
            "seconds_measuring": time.perf_counter() - began,
        }
        self.measuring += record["seconds_measuring"]
        self.write(record)
        print(
            f"{record['minutes']:7.2f} min {steps:6d} steps  epoch {record['epoch']}  k-NN test {knn:.4f}  NMI "
            f"labels {record['nmi_labels']:.4f}  ({record['seconds_measuring']:.0f} s measuring)"
            + ("  random init" if steps == 0 else "  final" if final else ""),
            flush=True,
        )
        return record

    def write(self, record: dict) -> None:
        with self.jsonl.open("a") as file:
            file.write(json.dumps(record) + "\n")


def train_archive(args: argparse.Namespace) -> Path:
    """The shared archive, or a seeded --train-images subset of its train split (written once into --cache)."""
    source = Path(args.data_dir) / ARCHIVE
    if not args.train_images:
        return source
    target = Path(args.cache) / f"cifar10-train-{args.train_images}.npz"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with np.load(source) as archive:
            count = len(archive["off_train"]) - 1
            rows = np.sort(np.random.default_rng(SUBSET_SEED).permutation(count)[: args.train_images])
            subset = {**archive_rows(archive, "train", rows), "classes": archive["classes"]}
        partial = target.with_name(target.stem + ".partial.npz")
        np.savez(partial, **subset)
        partial.rename(target)
    return target


def read(jsonl: Path) -> tuple[dict, list[dict], dict]:
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    header = next(r for r in records if r["kind"] == "header")
    done = next((r for r in records if r["kind"] == "done"), {})
    return header, [r for r in records if r["kind"] == "point"], done


def plot_and_table(jsonl: Path, prefix: str) -> None:
    """PREFIX.png and PREFIX.md from the JSONL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header, points, done = read(jsonl)
    minutes = [p["minutes"] for p in points]
    figure, axes = plt.subplots(figsize=(7, 4.2))
    axes.plot(minutes, [p["knn_test"] for p in points], "o-", label="k-NN test accuracy (k=20)")
    axes.plot(minutes, [p["nmi_labels"] for p in points], "s-", label="NMI of the run's labels (train)")
    axes.annotate("random init", (0, points[0]["knn_test"]), textcoords="offset points", xytext=(6, -12))
    axes.set_xlabel("training minutes (measuring excluded)")
    axes.set_ylim(0, max(0.5, *[p["knn_test"] for p in points]) + 0.05)
    axes.set_title(f"default configuration on {header['train_images']} CIFAR-10 train images", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(prefix + ".png", dpi=120)
    lines = [
        f"# What compute buys (issue 29): {Path(prefix).name}",
        "",
        f"- machine: {header['cpu']}; precision {header.get('precision', '?')}; {header['threads']} torch threads",
        f"- {header['date']}: `{header['command']}`",
        f"- the default configuration (overrides: {header['overrides'] or 'none'}), budget run.max_minutes = "
        f"{header['budget_minutes']}; memory: {header['train_images']} CIFAR-10 train images (the run's), queries: "
        f"{header['test_images']} test images; weighted k-NN, k=20, T=0.07, cosine, on the embedding",
        "- minutes: wall minutes since the training started (decoding, label updates included), less measuring; "
        "the first row is the random initialisation with the run's first labels, the last the trained network "
        "with its final labels",
    ]
    if done:
        lines.append(
            f"- the run: {done['epochs']} epochs, {done['steps']} steps, {done['label_updates']} label updates, "
            f"{done['seconds_train']:.0f} s training steps; {done['wall_minutes']:.1f} wall minutes in all, of "
            f"which {done['measuring_minutes']:.1f} measuring; peak RSS {done['peak_rss_gb']:.1f} GB"
        )
    lines += [
        "",
        f"![curve]({Path(prefix).name}.png)",
        "",
        "| minutes | steps | epoch | k-NN test | NMI labels |",
    ]
    lines.append("| --- | --- | --- | --- | --- |")
    for p in points:
        name = " (random init)" if p["steps"] == 0 else " (final)" if p["final"] else ""
        lines.append(
            f"| {p['minutes']:.1f}{name} | {p['steps']} | {p['epoch']} | {p['knn_test']:.4f} | {p['nmi_labels']:.4f} |"
        )
    Path(prefix + ".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {prefix}.png and {prefix}.md", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=120.0, help="time budget (run.max_minutes)")
    parser.add_argument("--every", type=float, default=10.0, help="minutes of training between points")
    parser.add_argument("--train-images", type=int, help="a seeded subset of the train split (default: all)")
    parser.add_argument("--test-images", type=int, help="a seeded subset of the test split as queries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="SECTION.OPTION=VALUE (repeatable)")
    today = datetime.date.today().isoformat()
    parser.add_argument(
        "--out", default=str(HERE / "results" / f"curve-{today}"), help="PREFIX of the outputs"
    )
    parser.add_argument("--plot-only", action="store_true", help="only draw PREFIX.png and PREFIX.md again")
    parser.add_argument("--data-dir", default=str(HERE.parents[1] / "shared" / "datasets"))
    parser.add_argument("--cache", default=str(HERE / ".cache"), help="folder of the subset archives")
    args = parser.parse_args()
    jsonl = Path(args.out + ".jsonl")
    if args.plot_only:
        plot_and_table(jsonl, args.out)
        return
    if jsonl.exists():
        parser.error(f"{jsonl} exists: choose another --out, or --plot-only")
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    overrides = parse_set(args.set)
    run = {
        "seed": args.seed,
        "max_minutes": args.minutes,
        "report": False,
        "progress": False,
        "knn_monitor": 0,
    }
    header = {
        "kind": "header",
        "date": today,
        "command": shlex.join(["python", *sys.argv]),
        "cpu": cpu_line(),
    }
    header.update(threads=torch.get_num_threads(), budget_minutes=args.minutes, every=args.every)
    header.update(overrides=args.set)
    print(f"machine: {cpu_line()}; {args.minutes} min, a point every {args.every} min -> {jsonl}", flush=True)
    with tempfile.TemporaryDirectory(prefix="deepcluster-curve-") as tmp:
        layers = {**overrides, "data": {**overrides.get("data", {}), "data": str(train_archive(args))}}
        layers["data"]["split"] = "train"
        layers["run"] = {**overrides.get("run", {}), **run, "out": str(Path(tmp) / "run")}
        config = apply_overrides(preset_config("default"), layers, origin="curve")
        curve = Curve(args, jsonl, header)
        result = train(config, on_step=curve)
        curve.point(lambda: result.backbone, steps=curve.steps, labels=result.labels, final=True)
    history = result.history
    curve.write(
        {
            "kind": "done",
            "epochs": len(history),
            "steps": curve.steps,
            "label_updates": sum(int(r.get("label_updates", 0)) for r in history),
            "seconds_train": sum(float(r.get("seconds_train", 0.0)) for r in history),
            "wall_minutes": (time.perf_counter() - curve.started) / 60,
            "measuring_minutes": curve.measuring / 60,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "history": history,
        }
    )
    plot_and_table(jsonl, args.out)


if __name__ == "__main__":
    main()
