"""The command-line side of using a trained run: `deepcluster embed`, `assign` (and the others registered in
`COMMANDS`), each thin over the Python API of this package."""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deepcluster.cluster import index as faiss_index
from deepcluster.config import ConfigError
from deepcluster.config.flags import add_common_flags
from deepcluster.data.sources import ImageSource, open_source, write_shards
from deepcluster.storage import atomic_write_text
from deepcluster.use.export import add_export_parser, run_export
from deepcluster.use.images import to_pil
from deepcluster.use.outputs import names_file, write_assignments, write_embeddings
from deepcluster.use.run import TrainedRun, load
from deepcluster.use.search import DUPLICATE_THRESHOLD, RunIndex
from deepcluster.use.search_page import write_search_page

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
    add_common_flags(p, progress=True, trust=True)


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


def _add_index(commands: Parsers) -> None:
    p = commands.add_parser(
        "index",
        help="build the search index over a trained run's images (RUN/index/)",
        description="Embed every image of the run once and build a faiss index over the embeddings: exact "
        f"inner product up to {faiss_index.EXACT_MAX_VECTORS:,} images, IVF above (--kind). It is kept in "
        "RUN/index/ and rebuilt when missing, damaged or older than the run's checkpoint; search and "
        "duplicates build it themselves when needed.",
    )
    add_run_arguments(p, data=False)
    p.add_argument("--kind", default="auto", choices=faiss_index.KINDS, help="index kind (default: auto)")
    p.add_argument("--rebuild", action="store_true", help="build it again even when it is up to date")


def _run_index(args: argparse.Namespace) -> int:
    index = open_run(args).index(args.kind, args.rebuild, not args.no_progress)
    print(
        f"{len(index)} images indexed ({index.kind}, {index.vectors.shape[1]} dimensions) in {index.folder}"
    )
    return 0


def _add_search(commands: Parsers) -> None:
    p = commands.add_parser(
        "search",
        help="the images of a trained run most similar to each query image",
        description="For each QUERY (an image file, or the name of one of the run's images as labels.csv "
        "gives it) print the K most similar images of the run, best first, with their cosine similarity.",
    )
    add_run_arguments(p, data=False)
    p.add_argument("queries", nargs="+", metavar="QUERY", help="image files or names of the run's images")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--html", metavar="FILE", help="also write a page of the results (thumbnails inline)")


def _queries(
    run: TrainedRun, index: RunIndex, source: ImageSource, given: list[str]
) -> tuple[np.ndarray, list[Callable]]:
    """Each query's embedding and a way to picture it: a file is embedded, a run's image is looked up."""
    vectors, pictures = [], []
    for query in given:
        row = None if Path(query).is_file() else index.row_of(query)
        if row is not None:
            vectors.append(np.asarray(index.vectors[row], dtype=np.float32))
            pictures.append(lambda i=int(index.indices[row]): source.load(i))
        elif Path(query).is_file():
            vectors.append(index.project(run.embed([query]))[0])  # an unreadable file: ConfigError
            pictures.append(lambda query=query: to_pil(query))
        else:
            raise ConfigError(f"{query}: no such image file, and the run has no image of that name")
    return np.stack(vectors), pictures


def _run_search(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ConfigError(f"--k {args.k}: give a positive number of neighbours")
    run = open_run(args)
    index = run.index(progress=not args.no_progress)
    source = images_of(argparse.Namespace(data=None, split=None), run)  # the run's images, opened once
    vectors, pictures = _queries(run, index, source, args.queries)
    hits = index.search_vectors(vectors, args.k, list(args.queries))
    for q, query in enumerate(hits.queries):
        print(query)
        for place, name in enumerate(hits.names[q]):
            print(f"  {place + 1:3d}  {hits.scores[q, place]:.4f}  {name}  (index {hits.indices[q, place]})")
    if args.html:
        write_search_page(args.html, f"search in {run.run_dir.root}", hits, pictures, source.load)
        print(f"page written to {args.html}")
    return 0


def _add_duplicates(commands: Parsers) -> None:
    p = commands.add_parser(
        "duplicates",
        help="groups of near-duplicate images in a trained run, largest first, as CSV",
        description="Groups of images whose embeddings have cosine similarity at least --threshold (joined "
        "through chains of such pairs), largest group first. CSV columns: group, size, index, image, "
        "similarity (to the group's first image).",
    )
    add_run_arguments(p, data=False)
    p.add_argument(
        "--threshold",
        type=float,
        default=DUPLICATE_THRESHOLD,
        help=f"cosine similarity from which two images are copies (default {DUPLICATE_THRESHOLD})",
    )
    p.add_argument("--out", help="write the CSV to this file (default: print it)")


def _run_duplicates(args: argparse.Namespace) -> int:
    if not 0.0 < args.threshold <= 1.0:
        raise ConfigError(f"--threshold {args.threshold}: give a cosine similarity in (0, 1]")
    if args.out is not None and not args.out.endswith(".csv"):
        raise ConfigError(f"--out {args.out}: give a file name ending in .csv")
    index = open_run(args).index(progress=not args.no_progress)
    groups = index.duplicates(args.threshold)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "size", "index", "image", "similarity"])
    for number, group in enumerate(groups, start=1):
        first = np.asarray(index.vectors[group[0]], dtype=np.float32)
        for row in group:
            similarity = float(np.dot(np.asarray(index.vectors[row], dtype=np.float32), first))
            writer.writerow(
                [number, len(group), int(index.indices[row]), index.names[row], f"{similarity:.4f}"]
            )
    if args.out is None:
        print(buffer.getvalue(), end="")
    else:
        atomic_write_text(Path(args.out), buffer.getvalue())
        copies = sum(len(group) for group in groups)
        print(f"{len(groups)} group(s) of near-duplicates ({copies} images) written to {args.out}")
    return 0


def _add_shards(commands: Parsers) -> None:
    p = commands.add_parser(
        "shards",
        help="write images into WebDataset tar shards (for --data 'OUT-{000000..000099}.tar')",
        description="Copy every image of DATA (a folder, a file list, an .npz, a named data set) into tar "
        "shards of --per-shard samples each: the original file's bytes, its name and its class.",
    )
    p.add_argument("data", help="the images to copy")
    p.add_argument("out", help="shard name pattern with a number, e.g. shards/train-%%06d.tar")
    p.add_argument("--per-shard", type=int, default=10_000, help="samples per shard (default 10000)")
    p.add_argument("--split", help="split of DATA (default: its training split)")
    add_common_flags(p, progress=True)


def _run_shards(args: argparse.Namespace) -> int:
    source = open_source(args.data, split=args.split)
    bar = tqdm(total=len(source), desc="shards", unit="img", disable=True if args.no_progress else None)
    written = write_shards(source, args.out, args.per_shard, lambda _: bar.update(1))
    bar.close()
    last = written[-1] if written else args.out
    print(f"{len(source)} images written into {len(written)} shard(s), the last {last}")
    return 0


COMMANDS: dict[str, tuple[Callable[[Parsers], None], Callable[[argparse.Namespace], int]]] = {
    "embed": (_add_embed, _run_embed),
    "assign": (_add_assign, _run_assign),
    "export": (add_export_parser, run_export),
    "index": (_add_index, _run_index),
    "search": (_add_search, _run_search),
    "duplicates": (_add_duplicates, _run_duplicates),
    "shards": (_add_shards, _run_shards),
}
"""name -> (add its parser, run it); `deepcluster.cli` adds every one."""

__all__ = ["COMMANDS", "add_run_arguments", "images_of", "open_run"]
