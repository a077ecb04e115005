"""Does a configuration learn? Random initialisation versus trained, on the embedded CIFAR-10 split.

Trains a method (default: the default one) with a preset on the embedded 10,000-image split, for its epochs or
within `--minutes`, then measures for the same architecture at random initialisation (same seed) and after
training:
  * k-NN accuracy: weighted (exp(sim/0.07)), cosine, k=20, leave-one-out over the split, on the method's
    embedding (the representation it offers), on each tap (average-pooled to about 2,048 values) and the best;
  * NMI and ARI to the truth of a k-means of the embedding with the run's k (PCA-whitened, as DeepCluster), and,
    for the trained network, of the run's own final labels (`nmi_labels`, the first set or head).

    python benchmarks/learns.py                                   # the default method and preset
    python benchmarks/learns.py --method deepcluster --epochs 4
    python benchmarks/learns.py --method deepcluster-v2 --minutes 5 --set deepcluster_v2.n_small=2

Prints the machine (CPU model, bf16 flags, threads, precision), one table and the margins (trained - random).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepcluster import load_config, preset_config
from deepcluster.api import train
from deepcluster.cluster import kmeans
from deepcluster.cluster.knn import weighted_knn_accuracy
from deepcluster.cluster.metrics import ari, nmi
from deepcluster.cluster.preprocess import pca_whiten
from deepcluster.config import apply_overrides, parse_set
from deepcluster.data.decode import decode_images
from deepcluster.data.sources import open_source
from deepcluster.data.views import ClusterView
from deepcluster.engine.device import Precision, machine_description
from deepcluster.evaluate.linear_probe import probe_pool_size
from deepcluster.models import build_backbone, channels_last
from deepcluster.seeding import derive_seed, seed_everything
from deepcluster.storage import RunDir

KNN_POOLED_DIM = 2048
"""Each tap is average-pooled to about this many values before its k-NN."""


@torch.no_grad()
def layer_features(backbone, config, images, precision) -> dict[str, np.ndarray]:
    """The embedding and every tap (pooled to about 2,048 values) of every image, cluster view, eval mode."""
    backbone.eval()
    view = ClusterView(config.data.input_size, config.data.mean, config.data.std)
    taps = backbone.tap_names
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in [*taps, "embedding"]}
    for start in range(0, images.shape[0], 256):
        x = channels_last(view(images[start : start + 256].to(precision.device)))
        with precision.autocast():
            found = backbone.forward_taps(x, taps)
            embedding = backbone(x)
        for name in taps:
            tap = found[name]
            side = probe_pool_size(tap.shape[1], tap.shape[-1], target=KNN_POOLED_DIM)
            pooled = torch.nn.functional.adaptive_avg_pool2d(tap.float(), side)
            chunks[name].append(torch.flatten(pooled, 1).cpu().numpy())
        chunks["embedding"].append(embedding.float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def measure(backbone, config, images, true_labels, precision, own_labels=None) -> dict[str, float]:
    """k-NN (LOO) on the embedding and every pooled tap; NMI/ARI of a k-means of the embedding (and of the
    run's own labels when given)."""
    features = layer_features(backbone, config, images, precision)
    scores = {
        f"knn20_{name}": weighted_knn_accuracy(values, true_labels, k=20, temperature=0.07)
        for name, values in features.items()
    }
    scores["knn20_best_layer"] = max(scores.values())
    reduced = pca_whiten(
        features["embedding"], dim=min(config.cluster.pca_dim or 256, features["embedding"].shape[1])
    )
    clusters = kmeans(
        reduced, config.cluster.k, n_iter=20, seed=derive_seed(config.run.seed, "benchmark")
    ).labels
    scores["nmi_kmeans"] = nmi(true_labels, clusters)
    scores["ari_kmeans"] = ari(true_labels, clusters)
    if own_labels is not None:
        scores["nmi_labels"] = nmi(true_labels, own_labels)
        scores["ari_labels"] = ari(true_labels, own_labels)
    return scores


def train_and_decode(config):
    """Train `config`; returns (result, training seconds, the resolved config, its decoded images, their true
    labels, the run's precision)."""
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    resolved = load_config(Path(result.run_dir) / "config.yaml")
    source = open_source(resolved.data.data, root=resolved.data.data_root, split=resolved.data.split)
    decoded = decode_images(source, resolved.data.resize, progress=False, inner_size=resolved.data.input_size)
    truth = np.asarray(source.labels)[decoded.indices]
    precision = Precision(torch.device(resolved.run.device), resolved.run.precision)
    return result, seconds, resolved, decoded.images, truth, precision


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", help="method to train (default: the default method)")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--minutes", type=float, help="time budget of the training (run.max_minutes)")
    parser.add_argument("--k", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", help="run directory (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    config = preset_config(args.preset, method=args.method)
    overrides = parse_set(args.set)
    overrides.setdefault("run", {}).update({"seed": args.seed, "progress": False, "report": False})
    if args.epochs:
        overrides["run"]["epochs"] = args.epochs
    if args.minutes:
        overrides["run"]["max_minutes"] = args.minutes
    if args.k:
        overrides.setdefault("cluster", {})["k"] = args.k
    out = args.out or tempfile.mkdtemp(prefix="deepcluster-learns-")
    overrides["run"]["out"] = str(Path(out) / "run") if not args.out else out
    config = apply_overrides(config, overrides, origin="benchmark")

    result, seconds, resolved, images, true_labels, precision = train_and_decode(config)
    own = RunDir(result.run_dir).read_labels().labels[:, 0]

    seed_everything(config.run.seed)
    model = resolved.model
    random_net = build_backbone(model.arch, sobel=model.sobel, input_size=resolved.data.input_size)
    random_net = random_net.to(precision.device).to(memory_format=torch.channels_last)
    before = measure(random_net, resolved, images, true_labels, precision)
    after = measure(result.backbone, resolved, images, true_labels, precision, own_labels=own)

    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    print(f"\nmachine: {machine_description(precision.name)}")
    print(
        f"method {resolved.method}, preset {config.preset}, arch {model.arch}, {len(result.history)} of "
        f"{resolved.run.epochs} epochs, k={resolved.cluster.k}, training {seconds:.0f} s, peak RSS {peak_gb:.2f} GB"
    )
    print(f"{'measure':<20} {'random init':>12} {'trained':>10} {'margin':>9}")
    for key in after:
        base = before.get(key)
        margin = f"{after[key] - base:>+9.4f}" if base is not None else f"{'':>9}"
        print(f"{key:<20} {base if base is not None else float('nan'):>12.4f} {after[key]:>10.4f} {margin}")
    if args.json:
        record = {"random": before, "trained": after, "seconds": seconds, "config": resolved.to_dict()}
        record["history"] = result.history
        record["peak_rss_gb"] = peak_gb
        record["machine"] = machine_description(precision.name)
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
