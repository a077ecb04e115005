"""Power Iteration Clustering (`deepcluster.cluster.pic`): time and memory against N, and DeepCluster trained with
k-means and with PIC side by side.

Scaling (the default): for each N of `--sizes`, N synthetic unit vectors of dimension `--dim` (256: the PCA
output DeepCluster clusters), a mixture of N / `--per-centre` random centres on the sphere, each point at its own
distance from its centre (Gaussian noise of a per-point scale drawn log-uniformly from `--spread`, so that every
group has a dense core, which PIC's local maxima find), normalised. PIC with the defaults (nnn 5, sigma 0.2,
alpha 0.001, 200 iterations, singletons moved), timed step by step: the k-NN graph (faiss on the CPU, exact up to
50,000 points, IVF above: `build_index(kind="auto")`), the weights and symmetrisation, the power iteration
(float64), the pointers and their roots, the singletons. Memory: the peak growth of the process's anonymous
resident memory over the points already made (RssAnon sampled every 20 ms), and the process's peak resident
memory (ru_maxrss) after each N. ARI to the planted centres says how much of the mixture PIC found.

    python benchmarks/pic.py                                  # N = 10k, 100k, 1M
    python benchmarks/pic.py --sizes 10000 --results /tmp/pic.md
    python benchmarks/pic.py --train                          # k-means and PIC runs on the embedded split
    python benchmarks/pic.py --train --epochs 1 --set optim.epoch_size=512

With --train: the same DeepCluster run (preset, seed, epochs) with `--clustering kmeans` and `--clustering pic`
on the embedded CIFAR-10 test split (or `--data`), then for each: the clusters found at every epoch's labels,
NMI and ARI of labels.csv to the true classes, its cluster sizes, the weighted k-NN (k 20, leave-one-out) of the
trained embedding, and the seconds spent training and assigning.

Prints the machine (CPU model, flags, cores, torch and faiss threads) and writes a Markdown table to `--results`
(default: benchmarks/results/pic-cpu-DATE.md).
"""

from __future__ import annotations

import argparse
import datetime
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from deepcluster import preset_config
from deepcluster.cluster.knn import weighted_knn_accuracy
from deepcluster.cluster.metrics import ari, nmi
from deepcluster.cluster.pic import knn_graph, move_singletons, pic_graph, pointer_roots, power_iteration
from deepcluster.config import apply_overrides, parse_set
from deepcluster.storage import RunDir
from learns import layer_features, train_and_decode
from machine import cpu_line, status_mb

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    return (
        f"{cpu_line()}; torch {torch.get_num_threads()} threads, faiss {faiss.omp_get_max_threads()} threads"
    )


def cored_mixture(n: int, dim: int, per_centre: int, spread: tuple[float, float], seed: int):
    """(n unit vectors [n, dim] float32, their planted centre ids): see the module's description."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_centre), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.integers(len(centres), size=n)
    out = np.empty((n, dim), dtype=np.float32)
    low, high = np.log(spread[0]), np.log(spread[1])
    for start in range(0, n, 1 << 16):
        rows = slice(start, min(n, start + (1 << 16)))
        block = rng.standard_normal((rows.stop - start, dim), dtype=np.float32)
        block *= np.exp(rng.uniform(low, high, size=(len(block), 1))).astype(np.float32)
        block += centres[truth[rows]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[rows] = block
    return out, truth


class PeakAnon:
    """The peak anonymous resident memory (MB) of this process while the block runs, sampled every 20 ms."""

    def __enter__(self) -> PeakAnon:
        self.baseline = self.peak = status_mb("RssAnon")
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, status_mb("RssAnon"))
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, status_mb("RssAnon"))


def scaling_row(n: int, args: argparse.Namespace) -> str:
    points, truth = cored_mixture(n, args.dim, args.per_centre, tuple(args.spread), args.seed)
    seconds: dict[str, float] = {}

    def step(name: str, call):
        began = time.perf_counter()
        value = call()
        seconds[name] = time.perf_counter() - began
        return value

    with PeakAnon() as memory:
        ids, distances = step("graph", lambda: knn_graph(points, 5, seed=args.seed))
        graph = step("weights", lambda: pic_graph(ids, distances, 0.2))
        v = step("power", lambda: power_iteration(graph, 0.001, 200))
        roots = step("pointers", lambda: np.unique(pointer_roots(graph, v), return_inverse=True)[1])
        labels, moved = step("singletons", lambda: move_singletons(roots, ids))
    total = sum(seconds.values())
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    sizes = np.bincount(labels)
    row = (
        f"| {n:,} | {'exact' if n <= 50_000 else 'IVF'} | {seconds['graph']:.1f} | {seconds['weights']:.1f} | "
        f"{seconds['power']:.1f} | {seconds['pointers']:.1f} | {seconds['singletons']:.2f} | {total:.1f} | "
        f"{points.nbytes / 2**20:.0f} | {memory.peak - memory.baseline:.0f} | {peak_gb:.2f} | {len(sizes):,} | "
        f"{moved:,} | {int((sizes == 1).sum()):,} | {ari(truth, labels):.3f} |"
    )
    print(row, flush=True)
    return row


def table(intro: str, columns: list[str]) -> list[str]:
    """The lines before a Markdown table's rows: `intro`, the header of `columns`; the header is printed."""
    header = ["| " + " | ".join(columns) + " |", "| " + " | ".join(["---"] * len(columns)) + " |"]
    print("\n".join(header), flush=True)
    return [intro, "", *header]


def scaling(args: argparse.Namespace) -> list[str]:
    intro = (
        f"Data: unit vectors of dimension {args.dim}, a mixture of N / {args.per_centre} centres, per-point noise "
        f"scale log-uniform in [{args.spread[0]}, {args.spread[1]}], seed {args.seed}. PIC: nnn 5, sigma 0.2, "
        "alpha 0.001, 200 iterations in float64, singletons moved; the k-NN search in float32 (faiss)."
    )
    columns = ["N", "graph", "k-NN s", "weights s", "power s", "pointers s", "singletons s", "total s"]
    columns += ["points MB", "added MB (peak RssAnon)", "peak RSS GB", "clusters", "moved", "singletons"]
    lines = table(intro, [*columns, "ARI to centres"])
    return lines + [scaling_row(n, args) for n in args.sizes]


def train_row(algorithm: str, args: argparse.Namespace, folder: Path) -> str:
    overrides = parse_set(args.set)
    overrides.setdefault("cluster", {})["algorithm"] = algorithm
    run = overrides.setdefault("run", {})
    run.update({"seed": args.seed, "progress": False, "report": False, "out": str(folder / algorithm)})
    if args.epochs:
        run["epochs"] = args.epochs
    if args.data:
        overrides.setdefault("data", {})["data"] = args.data
    config = apply_overrides(preset_config(args.preset, method="deepcluster"), overrides, origin="benchmark")
    result, seconds, resolved, images, truth, precision = train_and_decode(config)
    labels = RunDir(result.run_dir).read_labels().labels[:, 0]
    embedding = layer_features(result.backbone, resolved, images, precision)["embedding"]
    sizes = np.bincount(labels)
    sizes = np.sort(sizes[sizes > 0])
    per_epoch = "/".join(str(record["n_clusters"]) for record in result.history)
    assign_s = sum(record.get("seconds_assign", 0.0) for record in result.history)
    row = (
        f"| {algorithm} | {per_epoch} | {len(sizes)} | {nmi(truth, labels):.4f} | {ari(truth, labels):.4f} | "
        f"{sizes[0]} / {int(np.median(sizes))} / {sizes[-1]} | "
        f"{weighted_knn_accuracy(embedding, truth, k=20, temperature=0.07):.4f} | {seconds:.0f} | {assign_s:.1f} | "
        f"{precision.name} |"
    )
    print(row, flush=True)
    return row


def side_by_side(args: argparse.Namespace) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="deepcluster-pic-"))
    data = args.data or "the embedded CIFAR-10 test split"
    epochs = f", {args.epochs} epochs" if args.epochs else ""
    intro = (
        f"DeepCluster, preset {args.preset}, seed {args.seed}, data {data}, settings "
        f"{' '.join(args.set) or '(the preset)'}{epochs}; NMI/ARI of labels.csv to the true classes; k-NN: "
        "weighted, k 20, leave-one-out, trained embedding."
    )
    columns = ["clustering", "clusters per epoch", "clusters in labels.csv", "NMI", "ARI"]
    columns += ["sizes min / median / max", "k-NN", "training s", "assigning s", "precision"]
    return table(intro, columns) + [train_row(algorithm, args, folder) for algorithm in ("kmeans", "pic")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--per-centre", type=int, default=100, help="points per planted centre")
    parser.add_argument("--spread", type=float, nargs=2, default=[0.003, 0.05], help="noise scale range")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", action="store_true", help="DeepCluster with k-means and with PIC instead")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the preset's)")
    parser.add_argument("--data", help="labelled data to train on (default: the embedded CIFAR-10 split)")
    parser.add_argument("--set", action="append", default=[], help="SECTION.OPTION=VALUE for both runs")
    parser.add_argument(
        "--results", help="Markdown file to write (default: benchmarks/results/pic-cpu-DATE.md)"
    )
    args = parser.parse_args()

    today = datetime.date.today().isoformat()
    print(f"machine: {machine()}", flush=True)
    body = side_by_side(args) if args.train else scaling(args)
    title = "DeepCluster with k-means and with PIC" if args.train else "PIC against N"
    text = "\n".join(
        [
            f"# {title} ({today})",
            "",
            f"Machine: {machine()}.",
            "",
            "```",
            " ".join(["python", "benchmarks/pic.py", *sys.argv[1:]]),
            "```",
            "",
            *body,
            "",
        ]
    )
    suffix = "-train" if args.train else ""
    path = Path(args.results) if args.results else RESULTS / f"pic{suffix}-cpu-{today}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
