"""Quality of a configuration on CIFAR-10 at a given budget, each figure beside random initialisation.

Trains a preset (default: `default`) on the CIFAR-10 train split of `../shared/datasets/cifar10_jpegbytes.npz`
(50,000 images) for a number of epochs, within a number of minutes if given, then prints one table: method,
epochs, wall time, NMI, ARI, Hungarian and majority accuracy of the clustering (train split, against the true
classes), weighted k-NN (k = 20, train split as memory, test split as queries) and the best-layer linear probe
(test split), for the trained network and for the same architecture at random initialisation (its clustering:
the method's own PCA + k-means on its features).

    python benchmarks/quality.py --minutes 30 --epochs 4           # default preset, at most 30 min of training
    python benchmarks/quality.py --epochs 2 --limit 5000 --probe-epochs 1   # a quick check on a subset
    python benchmarks/quality.py --method sela --epochs 4 --limit 10000     # SeLa at the same budget
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepcluster import load_config, preset_config
from deepcluster.api import train
from deepcluster.cluster import kmeans, l2_normalize
from deepcluster.cluster.metrics import clustering_report
from deepcluster.config import apply_overrides, parse_set
from deepcluster.data.decode import decode_images
from deepcluster.data.sources import open_source
from deepcluster.data.views import ClusterView
from deepcluster.engine.device import Precision, machine_description
from deepcluster.engine.features import extract_features
from deepcluster.evaluate.results import format_table, write_json
from deepcluster.evaluate.runner import EvalConfig, evaluate
from deepcluster.methods import build_method, primary_labels
from deepcluster.models import build_backbone
from deepcluster.seeding import derive_seed, seed_everything, torch_generator
from jpeg_archives import archive_rows

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10_jpegbytes.npz"
CLUSTER_KEYS = ("nmi", "ari", "hungarian_accuracy", "majority_accuracy", "nmi_classes", "hungarian_classes")


def subset_archive(path: Path, limit: int, seed: int, folder: Path) -> Path:
    """A JPEG-bytes archive holding a seeded random `limit` images of each split (the archive is class-sorted)."""
    out: dict[str, np.ndarray] = {}
    with np.load(path) as archive:
        out["classes"] = archive["classes"]
        for split in ("train", "test"):
            n = len(archive[f"off_{split}"]) - 1
            rows = np.sort(np.random.default_rng(seed).choice(n, size=min(limit, n), replace=False))
            out.update(archive_rows(archive, split, rows))
    target = folder / f"cifar10_subset_{limit}.npz"
    np.savez(target, **out)
    return target


def random_init_clustering(config, seed: int) -> dict[str, float]:
    """The method's labels for a randomly initialised network (DeepCluster: PCA-whitening + k-means of its
    features; SeLa: Sinkhorn on the outputs of freshly initialised heads)."""
    source = open_source(config.data.data, split=config.data.split)
    decoded = decode_images(source, config.data.resize, progress=False, inner_size=config.data.input_size)
    precision = Precision(torch.device(config.run.device), config.run.precision)
    seed_everything(seed)
    network = build_backbone(config.model.arch, sobel=config.model.sobel, input_size=config.data.input_size)
    network = network.to(precision.device).to(memory_format=torch.channels_last).eval()
    view = ClusterView(config.data.input_size, config.data.mean, config.data.std)
    method = build_method(config)
    # heads the labels are made through: the v2 methods' projection head, or SeLa's heads for its random start
    heads = method.initial_heads(network.feature_dim, torch_generator(seed))
    start = method.initial_assignment(decoded.indices, source.name, seed)
    if heads is None and start is not None:
        heads = method.build_heads(network.feature_dim, start, torch_generator(seed))
    heads = None if heads is None else heads.to(precision.device).eval()
    features = extract_features(
        lambda x: method.extract(network, heads, x), decoded.images, view, 256, precision
    )
    labels = primary_labels(method.assign(features, heads, seed=derive_seed(seed, "benchmark")).labels)
    truth = np.asarray(source.labels)[decoded.indices]
    return {
        **clustering_report(labels, truth),
        **class_clustering(network, config, decoded.images, truth, precision),
    }


def class_clustering(network, config, images, truth, precision) -> dict[str, float]:
    """A k-means of the L2-normalised embedding into as many clusters as there are classes: its NMI and Hungarian
    accuracy (the DeepCluster paper's 37.4 % on CIFAR-10 is such a figure)."""
    view = ClusterView(config.data.input_size, config.data.mean, config.data.std)
    features = extract_features(network.eval(), images, view, 256, precision)
    n_classes = int(truth.max()) + 1
    labels = kmeans(
        l2_normalize(features), n_classes, n_iter=50, seed=derive_seed(config.run.seed, "classes")
    ).labels
    report = clustering_report(labels, truth)
    return {"nmi_classes": report["nmi"], "hungarian_classes": report["hungarian_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a JPEG-bytes archive with train and test")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--method", default="deepcluster", help="any registered method")
    parser.add_argument("--epochs", type=int, help="epochs (the lr schedule's length); default: the preset's")
    parser.add_argument(
        "--minutes", type=float, help="time budget: stop before an epoch that would overrun it"
    )
    parser.add_argument("--k", type=int)
    parser.add_argument("--limit", type=int, help="use a random subset of this many images per split")
    parser.add_argument("--probe-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", help="run directory (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="deepcluster-quality-"))
    data = Path(args.data)
    if args.limit:
        data = subset_archive(data, args.limit, args.seed, work)
    overrides = parse_set(args.set)
    overrides.setdefault("data", {}).update({"data": str(data), "split": "train"})
    run = overrides.setdefault("run", {})
    run.update({"seed": args.seed, "progress": False, "out": args.out or str(work / "run")})
    if args.minutes:
        run["max_minutes"] = args.minutes
    if args.epochs:
        run["epochs"] = args.epochs
    if args.k:
        overrides.setdefault("cluster", {})["k"] = args.k
    overrides["method"] = args.method
    config = apply_overrides(preset_config(args.preset, method=args.method), overrides, origin="benchmark")

    started = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - started
    resolved = load_config(Path(result.run_dir) / "config.yaml")
    evaluation = evaluate(
        EvalConfig(
            str(result.run_dir), data=str(data), split="train", test_split="test", knn_ks=(20,),
            probe_epochs=args.probe_epochs, seed=args.seed, progress=False,
        )
    )  # fmt: skip
    trained_clusters = evaluation["clustering"]["metrics"]
    source = open_source(str(data), split="train")
    decoded = decode_images(source, resolved.data.resize, progress=False, inner_size=resolved.data.input_size)
    truth = np.asarray(source.labels)[decoded.indices]
    precision = Precision(torch.device(resolved.run.device), resolved.run.precision)
    trained_clusters.update(class_clustering(result.backbone, resolved, decoded.images, truth, precision))
    random_clusters = random_init_clustering(resolved, args.seed)
    rows = []
    for name, clusters in (("trained", trained_clusters), ("random_init", random_clusters)):
        scores = evaluation["networks"][name]
        rows.append(
            {
                "network": name,
                "method": resolved.method if name == "trained" else "-",
                "epochs": len(result.history) if name == "trained" else 0,
                "wall_s": round(wall) if name == "trained" else 0,
                **{key: clusters[key] for key in CLUSTER_KEYS},
                "knn20": scores["knn20"],
                "probe_best": scores.get("probe_best"),
            }
        )
    print(
        f"\nmachine: {machine_description(resolved.run.precision)}; data {data.name} (train {len(result.labels)} "
        f"images); preset {args.preset}, arch {resolved.model.arch}, k={resolved.cluster.k}; probes "
        f"{args.probe_epochs} epochs"
    )
    print(format_table(rows))
    write_json(Path(result.run_dir) / "quality.json", {"rows": rows, "evaluation": evaluation})
    print(json.dumps({"run_dir": str(result.run_dir)}))


if __name__ == "__main__":
    main()
