"""`deepcluster` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from deepcluster.config import (
    PRESETS,
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    preset_config,
)

# flag -> (section, option); the value is taken as the flag's parsed type.
TRAIN_FLAGS: dict[str, tuple[str, str]] = {
    "data": ("data", "data"),
    "data_root": ("data", "data_root"),
    "split": ("data", "split"),
    "input_size": ("data", "input_size"),
    "arch": ("model", "arch"),
    "k": ("cluster", "k"),
    "super_clusters": ("deepercluster", "super_clusters"),
    "epochs": ("run", "epochs"),
    "batch_size": ("optim", "batch_size"),
    "epoch_size": ("optim", "epoch_size"),
    "lr": ("optim", "lr"),
    "seed": ("run", "seed"),
    "device": ("run", "device"),
    "precision": ("run", "precision"),
    "out": ("run", "out"),
    "threads": ("run", "threads"),
    "checkpoint_every": ("run", "checkpoint_every"),
}


def _add_train_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a network by alternating clustering and classification",
        description="Train DeepCluster, DeeperCluster, SeLa, or any architecture on a run's labels (--labels). "
        "With no --data, runs on the embedded CIFAR-10 test split (10,000 images).",
    )
    p.add_argument("--method", help="deepcluster (default), deepercluster or sela")
    p.add_argument(
        "--labels",
        metavar="LABELS_CSV",
        help="train on the labels a run wrote (RUN_DIR/labels.csv), with any --arch: label transfer",
    )
    p.add_argument(
        "--data", help="image folder, .npz archive, file list, or data set name (cifar10, stl10, ...)"
    )
    p.add_argument("--data-root", help="root folder of a named torchvision data set (default ./data)")
    p.add_argument("--split", help="split of an archive or named data set (default: train)")
    p.add_argument("--download", action="store_true", help="let torchvision download a named data set")
    p.add_argument("--out", help="run directory (default runs/<method>-<date>-<time>)")
    p.add_argument("--arch", help="alexnet, alexnet_small, vgg16, vgg16_small, resnet18, resnet50")
    p.add_argument(
        "--input-size", type=int, help="side of the network's input in pixels (default: from data)"
    )
    p.add_argument("--k", type=int, help="number of clusters")
    p.add_argument(
        "--super-clusters", type=int, help="deepercluster: super-clusters m (k must be a multiple; default 4)"
    )
    p.add_argument(
        "--no-rotations",
        action="store_true",
        help="deepercluster: no rotation targets (hierarchical k-means only)",
    )
    p.add_argument(
        "--distributed-kmeans",
        action="store_true",
        help="under torchrun: k-means over the processes' shards (all-reduced) instead of gathering the features",
    )
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--epoch-size", type=int, help="images drawn per epoch (default: data set size)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", help="fp32, bf16 or auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch and faiss")
    p.add_argument("--checkpoint-every", type=int, help="iterations between mid-epoch checkpoints (0: off)")
    p.add_argument("--save-features", action="store_true", help="write the last clustering features")
    p.add_argument("--no-sobel", action="store_true", help="feed RGB instead of Sobel-filtered grayscale")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named configuration to start from")
    p.add_argument("--config", help="YAML file with settings (a run's config.yaml reproduces it)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.OPTION=VALUE",
        help="set any option, e.g. --set optim.schedule=cosine (repeatable)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _parse_set(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, option = key.partition(".")
        if not sep or not dot or not option:
            raise ConfigError(
                f"--set {item}: expected SECTION.OPTION=VALUE, e.g. --set optim.schedule=cosine"
            )
        overrides.setdefault(section, {})[option] = yaml.safe_load(value)
    return overrides


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    """Preset, then --config file, then --set, then the named flags (later wins)."""
    if args.config:
        config = load_config(args.config)
        if args.preset:
            raw = yaml.safe_load(Path(args.config).read_text()) or {}
            raw["preset"] = args.preset
            config = config_from_dict(raw, origin=f"--config {args.config}")
    else:
        config = preset_config(args.preset or "default")
    config = apply_overrides(config, _parse_set(args.set), origin="--set")
    flags: dict[str, dict[str, Any]] = {}
    for flag, (section, option) in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            flags.setdefault(section, {})[option] = value
    if args.method:
        flags["method"] = args.method
    if args.labels:
        flags["method"] = "transfer"
        flags["transfer"] = {"labels": args.labels}
        if args.method and args.method != "transfer":
            raise ConfigError(
                f"--labels trains on given labels and cannot be combined with --method {args.method}"
            )
    if args.download:
        flags.setdefault("data", {})["download"] = True
    if args.save_features:
        flags.setdefault("run", {})["save_features"] = True
    if args.no_sobel:
        flags.setdefault("model", {})["sobel"] = False
    if args.distributed_kmeans:
        flags.setdefault("cluster", {})["distributed_kmeans"] = True
    if args.no_rotations:
        flags.setdefault("deepercluster", {})["rotations"] = False
    if args.no_progress:
        flags.setdefault("run", {})["progress"] = False
    return apply_overrides(config, flags, origin="command line")


RESUMABLE = {"epochs", "device", "threads", "no_progress"}


def _run_train(args: argparse.Namespace) -> int:
    from deepcluster.engine.trainer import resume, train

    if args.resume:
        given = {flag for flag in TRAIN_FLAGS if getattr(args, flag) is not None}
        given |= {name for name in ("config", "preset", "method", "labels") if getattr(args, name)}
        given |= {
            name
            for name in (
                "download",
                "save_features",
                "no_sobel",
                "no_rotations",
                "distributed_kmeans",
                "no_progress",
            )
            if getattr(args, name)
        }
        if args.set:
            given.add("set")
        fixed = sorted(given - RESUMABLE)
        if fixed:
            raise ConfigError(
                f"--resume: {', '.join('--' + f.replace('_', '-') for f in fixed)} cannot be changed when resuming; "
                "a resumed run keeps its config.yaml (only --epochs, --device, --threads, --no-progress may change)"
            )
        overrides: dict[str, Any] = {}
        if args.device:
            overrides["device"] = args.device
        if args.threads:
            overrides["threads"] = args.threads
        if args.no_progress:
            overrides["progress"] = False
        result = resume(args.resume, epochs=args.epochs, **overrides)
    else:
        result = train(build_train_config(args))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun the first process reports for all
        return 0
    last = result.history[-1] if result.history else {}
    print(f"run directory: {result.run_dir}")
    if last:
        summary = {k: last.get(k) for k in ("epoch", "loss", "nmi_true", "ari_true", "nmi_prev", "n_empty")}
        print(
            "last epoch: "
            + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
        )
    return 0


def _add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="k-NN, per-layer linear probes and clustering metrics of a run or checkpoint, beside random init",
        description="Evaluate a run directory or a checkpoint file (ours or the released DeepCluster layout).",
    )
    p.add_argument("target", help="run directory or checkpoint file")
    p.add_argument(
        "--data", help="labelled images for the k-NN memory and probe training (default: the run's)"
    )
    p.add_argument("--split", help="split of --data (default: its training split)")
    p.add_argument("--test-data", help="labelled test images (default: a 20%% hold-out of --data)")
    p.add_argument("--test-split", help="split of the test data, e.g. test")
    p.add_argument("--input-size", type=int, help="network input size of a checkpoint file (default 224)")
    p.add_argument(
        "--knn-k", type=int, nargs="+", default=[20, 200], help="neighbours of the k-NN (default 20 200)"
    )
    p.add_argument("--probe-epochs", type=int, default=10, help="epochs of each linear probe (0: none)")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-initialisation baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", help="JSON output (default: RUN/evaluation.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _add_report_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "report",
        help="(re)build a run's HTML report: curves, cluster grids, what the filters see",
        description="Write RUN_DIR/report/index.html (opens from disk) with its PNGs; thumbnails are cached.",
    )
    p.add_argument("run_dir", help="a run directory")
    p.add_argument("--clusters", type=int, default=20, help="largest clusters shown as grids (default 20)")
    p.add_argument("--per-cluster", type=int, default=36, help="images per cluster grid (default 36)")
    p.add_argument("--channels", type=int, default=8, help="channels shown per deeper layer (default 8)")
    p.add_argument(
        "--tap",
        action="append",
        metavar="LAYER[:C,C,...]",
        help="a layer to show (e.g. conv5, or conv5:3,17,42 for chosen channels); repeatable "
        "(default: a middle and the last conv layer, --channels random channels each)",
    )
    p.add_argument(
        "--gradient-ascent",
        action="store_true",
        help="also the paper's gradient-ascent filter pictures (slow)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _run_report(args: argparse.Namespace) -> int:
    from deepcluster.report.build import ReportOptions, build_report

    for option in ("clusters", "per_cluster", "channels"):
        if getattr(args, option) < 1:
            raise ConfigError(f"--{option.replace('_', '-')} {getattr(args, option)}: must be >= 1")
    taps: dict[str, list[int]] = {}
    for item in args.tap or []:
        layer, _, channels = item.partition(":")
        try:
            taps[layer] = [int(c) for c in channels.split(",") if c.strip()]
        except ValueError:
            raise ConfigError(f"--tap {item}: expected LAYER or LAYER:C,C,... with channel numbers") from None
    options = ReportOptions(
        taps=taps or None,
        clusters=args.clusters,
        per_cluster=args.per_cluster,
        channels=args.channels,
        gradient_ascent=args.gradient_ascent,
        seed=args.seed,
    )
    print(f"report: {build_report(args.run_dir, options)}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from deepcluster.evaluate.runner import EvalConfig, evaluate, format_results

    if args.probe_epochs < 0:
        raise ConfigError(f"--probe-epochs {args.probe_epochs}: must be >= 0")
    if any(k < 1 for k in args.knn_k):
        raise ConfigError(f"--knn-k {args.knn_k}: every k must be >= 1")
    config = EvalConfig(
        target=args.target,
        data=args.data,
        split=args.split,
        test_data=args.test_data,
        test_split=args.test_split,
        input_size=args.input_size,
        knn_ks=tuple(args.knn_k),
        probe_epochs=args.probe_epochs,
        baseline=not args.no_baseline,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        out=args.out,
    )
    print(format_results(evaluate(config)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `deepcluster` argument parser."""
    parser = argparse.ArgumentParser(prog="deepcluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(commands)
    _add_evaluate_parser(commands)
    _add_report_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `deepcluster` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build loaded is not news
    from deepcluster.data.sources import DataError
    from deepcluster.engine.trainer import TrainingDiverged

    try:
        if args.command == "train":
            return _run_train(args)
        if args.command == "evaluate":
            return _run_evaluate(args)
        if args.command == "report":
            return _run_report(args)
    except (ConfigError, DataError) as error:
        print(f"deepcluster: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"deepcluster: training diverged: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("deepcluster: interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
