"""The command-line side of using a trained run: `deepcluster embed`, `assign` (and the others registered in
`COMMANDS`), each thin over the Python API of this package."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from deepcluster.data.sources import ImageSource, open_source
from deepcluster.storage import TRUST_HELP
from deepcluster.use.export import add_export_parser, run_export
from deepcluster.use.outputs import names_file, write_assignments, write_embeddings
from deepcluster.use.run import TrainedRun, load

Parsers = argparse._SubParsersAction


def add_run_arguments(p: argparse.ArgumentParser, data: bool = True) -> None:
    """RUN, and the options every command on a run takes."""
    p.add_argument("run", help="a run directory (made by deepcluster train)")
    if data:
        p.add_argument(
            "--data", help="images: a folder, a file list, an .npz or a named data set (default: the run's)"
        )
        p.add_argument(
            "--split", help="split of --data (default: its training split; the run's for its own data)"
        )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, or auto: the run's own when present (default)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def open_run(args: argparse.Namespace) -> TrainedRun:
    return load(args.run, device=args.device, trust_checkpoint=args.trust_checkpoint)


def images_of(args: argparse.Namespace, run: TrainedRun) -> ImageSource:
    """--data (or the run's own images)."""
    data = run.config.data
    if args.data is None:
        return open_source(data.data, root=data.data_root, split=args.split or data.split)
    return open_source(args.data, split=args.split)


def _add_embed(commands: Parsers) -> None:
    p = commands.add_parser(
        "embed",
        help="one embedding per image from a trained run (.npy + names, or .parquet)",
        description="Write the L2-normalised embedding of every readable image (the backbone's, or a conv "
        "layer's average-pooled with --layer) as OUT.npy plus OUT.names.txt, or as OUT.parquet.",
    )
    add_run_arguments(p)
    p.add_argument("--out", required=True, help="embeddings.npy or embeddings.parquet")
    p.add_argument("--layer", help="a conv layer, e.g. conv5 (average-pooled); default: the embedding")


def _run_embed(args: argparse.Namespace) -> int:
    run = open_run(args)
    if args.layer is not None:  # an unknown layer is named before any image is read
        run.embed_batch(torch.zeros((1, 3, run.resize, run.resize), dtype=torch.uint8), args.layer)
    rows, skipped = write_embeddings(run, images_of(args, run), args.out, args.layer, not args.no_progress)
    extra = f" and {names_file(Path(args.out))}" if args.out.endswith(".npy") else ""
    print(f"{rows} embeddings written to {args.out}{extra}; {len(skipped)} image(s) skipped")
    return 0


def _add_assign(commands: Parsers) -> None:
    p = commands.add_parser(
        "assign",
        help="put images into a trained run's clusters (each label set, with score and runner-up)",
        description="For every readable image: its cluster in each label set of the run (the run's own rule: "
        "nearest centroid after its PCA-whitening, Sinkhorn scaling, nearest prototype; the heads' argmax for "
        "label transfer), the distance, similarity or probability, and the runner-up. The run's own images "
        "get their labels.csv labels.",
    )
    add_run_arguments(p)
    p.add_argument("--out", required=True, help="assignments.csv")


def _run_assign(args: argparse.Namespace) -> int:
    run = open_run(args)
    rows, skipped = write_assignments(run, images_of(args, run), args.out, not args.no_progress)
    print(f"{rows} images assigned, written to {args.out}; {len(skipped)} image(s) skipped")
    return 0


COMMANDS: dict[str, tuple[Callable[[Parsers], None], Callable[[argparse.Namespace], int]]] = {
    "embed": (_add_embed, _run_embed),
    "assign": (_add_assign, _run_assign),
    "export": (add_export_parser, run_export),
}
"""name -> (add its parser, run it); `deepcluster.cli` adds every one."""

__all__ = ["COMMANDS", "add_run_arguments", "images_of", "open_run"]
