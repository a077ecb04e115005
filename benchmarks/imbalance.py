"""DeepCluster's k-means labels against SeLa's equal-size labels on long-tailed CIFAR-10, at the same budget.

Builds imbalanced training sets from the CIFAR-10 train split of `../shared/datasets/cifar10_jpegbytes.npz`, as we
read the SeLa paper's CIFAR experiments:
  * light: every class at full size except the last (truck), which keeps 50 % of its images;
  * heavy: class c keeps (100 - 10 c) % of its images (airplane 100 %, automobile 90 %, ..., truck 10 %);
  * none: the balanced subset itself (for reference).
Each method trains the same preset for the same epochs on each set; then a weighted k-NN (k = 20, the training set
as memory) is measured on the balanced CIFAR-10 test split, beside the same network at random initialisation, with
the NMI of the final labels to the true classes of the training set. Prints a table and writes JSON.

    python benchmarks/imbalance.py --limit 10000 --epochs 4                  # about 45 min on 2 CPU cores
    python benchmarks/imbalance.py --limit 2000 --epochs 1 --levels heavy    # a quick check
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepcluster import preset_config
from deepcluster.api import train
from deepcluster.cluster.metrics import nmi
from deepcluster.config import apply_overrides, parse_set
from deepcluster.evaluate.results import format_table, write_json
from deepcluster.evaluate.runner import EvalConfig, evaluate
from deepcluster.methods import primary_labels
from jpeg_archives import archive_rows
from machine import cpu_line

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10_jpegbytes.npz"
N_CLASSES = 10


def keep_fractions(level: str) -> np.ndarray:
    """Fraction of each class's images kept at an imbalance level."""
    if level == "none":
        return np.ones(N_CLASSES)
    if level == "light":
        return np.array([1.0] * (N_CLASSES - 1) + [0.5])
    if level == "heavy":
        return 1.0 - 0.1 * np.arange(N_CLASSES)
    raise ValueError(f"--levels: unknown level {level!r}; choose from none, light, heavy")


def imbalanced_archive(
    path: Path, level: str, limit: int | None, seed: int, folder: Path
) -> tuple[Path, np.ndarray]:
    """An archive whose train split is a seeded `limit`-image subset made imbalanced at `level`; the test split
    whole. Returns its path and the class sizes of its train split."""
    rng = np.random.default_rng(seed)
    with np.load(path) as archive:
        labels = archive["y_train"]
        rows = np.arange(len(labels)) if not limit else np.sort(rng.choice(len(labels), limit, replace=False))
        fractions = keep_fractions(level)
        kept = []
        for c in range(N_CLASSES):
            members = rows[labels[rows] == c]
            kept.append(rng.permutation(members)[: round(len(members) * fractions[c])])
        train_rows = np.sort(np.concatenate(kept))
        out = {"classes": archive["classes"], **archive_rows(archive, "train", train_rows)}
        out.update(archive_rows(archive, "test", np.arange(len(archive["y_test"]))))
        sizes = np.bincount(labels[train_rows], minlength=N_CLASSES)
    target = folder / f"cifar10_{level}.npz"
    np.savez(target, **out)
    return target, sizes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument(
        "--limit", type=int, default=10000, help="train images drawn before the imbalance (0: all)"
    )
    parser.add_argument("--levels", default="light,heavy", help="comma-separated: none, light, heavy")
    parser.add_argument("--methods", default="deepcluster,sela")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--k", type=int, help="clusters (per head for SeLa); default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="SECTION.OPTION=VALUE for every run")
    parser.add_argument("--out", help="folder for archives, runs and results (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="deepcluster-imbalance-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for level in args.levels.split(","):
        data, sizes = imbalanced_archive(Path(args.data), level, args.limit or None, args.seed, work)
        print(f"{level}: {sizes.sum()} train images, class sizes {sizes.tolist()}", flush=True)
        for position, method in enumerate(args.methods.split(",")):
            overrides = parse_set(args.set)
            overrides["method"] = method
            overrides.setdefault("data", {}).update({"data": str(data), "split": "train"})
            overrides.setdefault("run", {}).update(
                {
                    "seed": args.seed,
                    "progress": False,
                    "epochs": args.epochs,
                    "out": str(work / f"{level}-{method}"),
                }
            )
            if args.k:
                overrides.setdefault("cluster", {})["k"] = args.k
            config = apply_overrides(preset_config(args.preset), overrides, origin="benchmark")
            started = time.perf_counter()
            result = train(config)
            wall = time.perf_counter() - started
            evaluation = evaluate(
                EvalConfig(
                    str(result.run_dir), data=str(data), split="train", test_split="test", knn_ks=(20,),
                    probe_epochs=0, baseline=position == 0, seed=args.seed, progress=False,
                )
            )  # fmt: skip
            with np.load(data) as archive:
                truth = archive["y_train"][result.indices]
            labels = primary_labels(result.labels)
            cluster_sizes = np.bincount(labels)
            if position == 0:
                rows.append(
                    {"imbalance": level, "train_images": int(sizes.sum()), "method": "random_init", "epochs": 0,
                     "wall_s": 0, "nmi_true": None, "largest_cluster_share": None,
                     "knn20_test": evaluation["networks"]["random_init"]["knn20"]}
                )  # fmt: skip
            rows.append(
                {"imbalance": level, "train_images": int(sizes.sum()), "method": method,
                 "epochs": len(result.history), "wall_s": round(wall), "nmi_true": nmi(truth, labels),
                 "largest_cluster_share": float(cluster_sizes.max() / len(labels)),
                 "knn20_test": evaluation["networks"]["trained"]["knn20"]}
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    print(
        f"\nmachine: {cpu_line()}, {torch.get_num_threads()} threads; preset "
        f"{args.preset}, {args.epochs} epochs; k-NN on the balanced CIFAR-10 test split (10,000 images)"
    )
    print(format_table(rows))
    write_json(work / "imbalance.json", {"rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
