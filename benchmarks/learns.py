"""Does the default configuration learn? Random initialisation versus trained, on the embedded CIFAR-10 split.

Trains the given preset (default: `default`) on the embedded 10,000-image split, then measures, for the same
architecture at random initialisation (same seed) and after training:
  * k-NN accuracy: weighted (exp(sim/0.07)), cosine, k=20, leave-one-out over the split, on the clustering
    features (penultimate FC before ReLU) and on conv5 (average-pooled to 2x2, flattened);
  * NMI and ARI to the truth of the method's own clustering (PCA-whitening + k-means with the run's k).

    python benchmarks/learns.py                       # the default preset, its default epochs
    python benchmarks/learns.py --preset paper --k 100 --epochs 5
    python benchmarks/learns.py --set optim.lr=0.02 --set augment.color_jitter=0

Prints one table and the margins (trained minus random).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepcluster import load_config, preset_config
from deepcluster.cluster.metrics import ari, nmi
from deepcluster.cluster.preprocess import pca_whiten
from deepcluster.config import apply_overrides, parse_set
from deepcluster.data.decode import decode_images
from deepcluster.data.sources import open_source
from deepcluster.data.views import ClusterView
from deepcluster.engine.device import Precision
from deepcluster.engine.trainer import train
from deepcluster.evaluate.knn import weighted_knn_accuracy
from deepcluster.evaluate.linear_probe import probe_pool_size
from deepcluster.methods import build_method
from deepcluster.models import build_backbone
from deepcluster.seeding import derive_seed, seed_everything

KNN_POOLED_DIM = 2048
"""Each conv layer is average-pooled to about this many values before its k-NN."""


def layer_features(backbone, config, images, precision) -> dict[str, np.ndarray]:
    """The embedding (penultimate FC, pre-ReLU) and every conv layer, pooled to about 2,048 values, in one pass.

    For the conv-FC backbones (AlexNet, VGG), whose ``classifier`` follows the last tap stage.
    """
    backbone.eval()
    view = ClusterView(config.data.input_size, config.data.mean, config.data.std)
    taps = backbone.tap_names
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in [*taps, "embedding"]}
    with torch.no_grad():
        for start in range(0, images.shape[0], 256):
            x = view(images[start : start + 256].to(precision.device)).contiguous(
                memory_format=torch.channels_last
            )
            found = {}
            with precision.autocast():
                h = backbone.preprocess(x)
                for name, module in backbone.tap_stages():  # one pass: every conv tap, then the FC layers
                    h = module(h)
                    if name is not None:
                        found[name] = h
                embedding = backbone.classifier(torch.flatten(h, 1))
            for name in taps:
                tap = found[name]
                side = probe_pool_size(tap.shape[1], tap.shape[-1], target=KNN_POOLED_DIM)
                pooled = torch.nn.functional.adaptive_avg_pool2d(tap.float(), side)
                chunks[name].append(torch.flatten(pooled, 1).cpu().numpy())
            chunks["embedding"].append(embedding.float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def measure(backbone, config, images, true_labels, precision) -> dict[str, float]:
    """k-NN (LOO) on the embedding and on every pooled conv layer, and NMI/ARI of the method's clustering."""
    features = layer_features(backbone, config, images, precision)
    method = build_method(config)
    assignment = method.assign(features["embedding"], seed=derive_seed(config.run.seed, "benchmark"))
    features["embedding_centered"] = features["embedding"] - features["embedding"].mean(axis=0)
    features["embedding_whitened"] = pca_whiten(features["embedding"], dim=config.cluster.pca_dim)
    scores = {
        f"knn20_{name}": weighted_knn_accuracy(values, true_labels, k=20, temperature=0.07)
        for name, values in features.items()
    }
    scores["knn20_best_layer"] = max(scores.values())
    scores["nmi_true"] = nmi(true_labels, assignment.labels)
    scores["ari_true"] = ari(true_labels, assignment.labels)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="default")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--k", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", help="run directory (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    config = preset_config(args.preset)
    overrides = parse_set(args.set)
    overrides.setdefault("run", {}).update({"seed": args.seed, "progress": False})
    if args.epochs:
        overrides["run"]["epochs"] = args.epochs
    if args.k:
        overrides.setdefault("cluster", {})["k"] = args.k
    out = args.out or tempfile.mkdtemp(prefix="deepcluster-learns-")
    overrides["run"]["out"] = str(Path(out) / "run") if not args.out else out
    config = apply_overrides(config, overrides, origin="benchmark")

    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    resolved = load_config(Path(result.run_dir) / "config.yaml")
    size = resolved.data.resize
    source = open_source(resolved.data.data, root=resolved.data.data_root, split=resolved.data.split)
    decoded = decode_images(source, size, progress=False, inner_size=resolved.data.input_size)
    true_labels = np.asarray(source.labels)[decoded.indices]
    precision = Precision(torch.device(resolved.run.device), resolved.run.precision)

    seed_everything(config.run.seed)
    random_net = build_backbone(
        resolved.model.arch, sobel=resolved.model.sobel, input_size=resolved.data.input_size
    ).to(precision.device)
    before = measure(random_net, resolved, decoded.images, true_labels, precision)
    after = measure(result.backbone, resolved, decoded.images, true_labels, precision)

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"precision {precision.name}; preset {config.preset}, {config.run.epochs} epochs, k={config.cluster.k}, "
        f"training {seconds:.0f} s"
    )
    print(f"{'measure':<18} {'random init':>12} {'trained':>10} {'margin':>9}")
    for key in before:
        print(f"{key:<18} {before[key]:>12.4f} {after[key]:>10.4f} {after[key] - before[key]:>+9.4f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"random": before, "trained": after, "seconds": seconds, "config": config.to_dict()}, indent=2
            )
        )


if __name__ == "__main__":
    main()
