"""What the v2 methods' memory bank saves: the phases of an epoch with labels from the bank (filled by the
training pass) beside labels from a cluster-view pass over the data before each update, and DeepCluster-v1's.

Runs each configuration for 2 epochs on the same data and prints the second epoch's seconds per phase (the
first labels always need a pass): extract (the pass), assign (clustering), train, and their sum.

    python benchmarks/bank.py                        # the embedded 10,000 images, 2,560 trained per epoch
    python benchmarks/bank.py --train-images 10000 --arch alexnet_small_gap
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from deepcluster import preset_config
from deepcluster.api import train
from deepcluster.config import apply_overrides
from deepcluster.engine.device import machine_description
from deepcluster.evaluate.results import format_table

PHASES = ("extract", "assign", "train")


def second_epoch(method: str, overrides: dict, out: Path) -> dict:
    config = apply_overrides(preset_config("default", method=method), overrides, origin="benchmark")
    config.run.out = str(out)
    result = train(config)
    return {"precision": result.config.run.precision, **result.history[1]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="images (default: the embedded CIFAR-10 test split)")
    parser.add_argument("--arch", default="alexnet_small_gap")
    parser.add_argument("--train-images", type=int, default=2560, help="images trained on per epoch")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    common = {
        "data": {"data": args.data},
        "model": {"arch": args.arch},
        "optim": {"epoch_size": args.train_images},
        "run": {"epochs": 2, "progress": False, "report": False, "knn_monitor": 0, "threads": args.threads},
    }
    cases = [
        ("deepcluster-v2, labels from the bank", "deepcluster-v2", {}),
        ("deepcluster-v2, labels from a pass", "deepcluster-v2", {"deepcluster_v2": {"labels_from": "pass"}}),
        ("deepcluster (v1)", "deepcluster", {}),
    ]
    work = Path(tempfile.mkdtemp(prefix="deepcluster-bank-"))
    rows, precision = [], "?"
    for i, (name, method, extra) in enumerate(cases):
        overrides = {**common, **extra}
        record = second_epoch(method, overrides, work / f"run{i}")
        precision = record["precision"]
        row = {"run": name, **{f"{p} s": round(float(record.get(f"seconds_{p}", 0.0)), 1) for p in PHASES}}
        row["epoch s"] = round(sum(row[f"{p} s"] for p in PHASES), 1)
        rows.append(row)
    print(f"\nmachine: {machine_description(precision)}; arch {args.arch}, {args.train_images} images trained per "
          "epoch; second epoch of each run")  # fmt: skip
    print(format_table(rows))


if __name__ == "__main__":
    main()
