"""A trained run's search index: its images' embeddings and a faiss index over them, kept in RUN/index/.

    index.json      what the index was built from: the checkpoint's SHA-256, the data, the kind; written last
    vectors.npy     float32 [N, D]: the run's embedding of every readable image (`TrainedRun.embed`), centred on
                    their mean (mean.npy) and L2-normalised again
    names.txt       one image name per row; rows.npy: the source index of each row
    index.faiss     `cluster.index` over the embeddings (exact up to 50,000 images, IVF above: see that module)

Why centred: a ReLU network's embeddings all lie in one orthant, so unrelated images already have cosine 0.95
(median over pairs in tests/test_search.py's run) and a copy cannot stand out; centred, unrelated pairs sit near
0 (their median -0.02), the nearest other image at most 0.76, and a resized JPEG copy at 0.98. Queries are
centred with the same mean.

`open_index` reuses what is there while it still fits and rebuilds what does not, and says why: no index yet, a
damaged file, or a network that trained on since (another checkpoint), another data set, another kind. Every
file is written atomically; index.json goes last, so a build cut off half-way is rebuilt, never half-used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from deepcluster.cluster import index as faiss_index
from deepcluster.config import ConfigError
from deepcluster.data.sources import ImageSource, open_source
from deepcluster.storage import atomic_save_numpy, atomic_write_text
from deepcluster.use.outputs import TrainedRun, write_npy

log = logging.getLogger("deepcluster")

INDEX_FORMAT = 1
DUPLICATE_THRESHOLD = faiss_index.DUPLICATE_THRESHOLD


@dataclass
class Hits:
    """The k nearest indexed images of each query, best first; places beyond what was found hold row -1."""

    queries: list[str]
    rows: np.ndarray
    """int64 [Q, k]: rows of the index (-1: nothing found there)."""
    scores: np.ndarray
    """float32 [Q, k]: cosine similarity (-inf where nothing was found)."""
    names: list[list[str]]
    """The images' names, per query (only the places that were found)."""
    indices: np.ndarray
    """int64 [Q, k]: the images' indices in the run's data source (-1 where nothing was found)."""


@dataclass
class RunIndex:
    """The index of a run's images (what `open_index` gives)."""

    folder: Path
    names: list[str]
    indices: np.ndarray
    vectors: np.ndarray
    """float32 [N, D], memory-mapped: the embeddings, centred and L2-normalised (what the index holds)."""
    mean: np.ndarray
    """float32 [D]: the mean embedding they were centred on."""
    index: faiss.Index
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def kind(self) -> str:
        return faiss_index.kind_of(self.index)

    def row_of(self, name: str) -> int | None:
        """The row of the image called `name` (its path or its name in the data source), or None."""
        found = np.flatnonzero(np.asarray(self.names, dtype=object) == name)
        return int(found[0]) if found.size else None

    def centre(self, embeddings: np.ndarray) -> np.ndarray:
        """`TrainedRun.embed` values [Q, D] as the index holds them: centred, L2-normalised."""
        return _centred(np.asarray(embeddings, dtype=np.float32), self.mean)

    def search(self, embeddings: np.ndarray, k: int = 10, queries: list[str] | None = None) -> Hits:
        """The `k` indexed images nearest each of `embeddings` (float32 [Q, D], `TrainedRun.embed` values)."""
        return self.search_vectors(self.centre(embeddings), k, queries)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, queries: list[str] | None = None) -> Hits:
        """The `k` indexed images nearest each of `vectors` (rows of `self.vectors`, or `centre`d)."""
        scores, rows = faiss_index.search(self.index, vectors, k)
        names = [[self.names[r] for r in row if r >= 0] for row in rows]
        indices = np.where(rows >= 0, self.indices[np.maximum(rows, 0)], -1)
        return Hits(queries or [f"<query {q}>" for q in range(len(rows))], rows, scores, names, indices)

    def duplicates(self, threshold: float = DUPLICATE_THRESHOLD) -> list[list[int]]:
        """Groups of rows whose embeddings are near-duplicates (`cluster.index.duplicate_groups`)."""
        return faiss_index.duplicate_groups(self.vectors, threshold, self.index)


def _centred(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows of `x` minus `mean`, L2-normalised; a row that is the mean itself keeps its own direction."""
    centred = x - mean
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    tiny = norms[:, 0] < 1e-6
    centred[tiny], norms[tiny] = x[tiny], np.maximum(np.linalg.norm(x[tiny], axis=1, keepdims=True), 1e-12)
    return (centred / norms).astype(np.float32)


def _centre_file(path: Path, rows: int = 1 << 14) -> np.ndarray:
    """Centre the float32 .npy at `path` in place (a block of rows at a time); returns the mean."""
    vectors = np.load(path, mmap_mode="r+")
    n = vectors.shape[0]
    mean = np.zeros(vectors.shape[1], dtype=np.float64)
    if n >= 2:  # one image has no direction to remove
        for start in range(0, n, rows):
            mean += vectors[start : start + rows].sum(axis=0, dtype=np.float64)
        mean /= n
    mean32 = mean.astype(np.float32)
    for start in range(0, n, rows):
        vectors[start : start + rows] = _centred(np.asarray(vectors[start : start + rows]), mean32)
    vectors.flush()
    del vectors
    return mean32


def _data_spec(source_spec: dict[str, Any]) -> dict[str, Any]:
    return {key: (None if value is None else str(value)) for key, value in source_spec.items()}


def _read_existing(folder: Path, wanted: dict[str, Any]) -> tuple[RunIndex | None, str]:
    """The index in `folder` when it fits `wanted` (else None), and why it does not."""
    info_path = folder / "index.json"
    if not info_path.is_file():
        return None, "there is no index yet"
    try:
        info = json.loads(info_path.read_text())
        vectors = np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False)
        mean = np.load(folder / "mean.npy", allow_pickle=False)
        names = (folder / "names.txt").read_text().splitlines()
        indices = np.load(folder / "rows.npy", allow_pickle=False)
    except (OSError, ValueError) as error:
        return None, f"its files are damaged ({error})"
    for key, what in (("format", "an older format"), ("checkpoint", "the network trained on since"),
                      ("data", "another data set"), ("kind", "another kind")):  # fmt: skip
        if info.get(key) != wanted[key]:
            return None, f"it was built for {what}"
    if (
        not (len(names) == len(indices) == vectors.shape[0] == info.get("rows"))
        or mean.shape != vectors.shape[1:]
    ):
        return None, "its files disagree on the number of images"
    try:
        index = faiss_index.load_index(folder / "index.faiss")
    except faiss_index.IndexFileError as error:
        return None, str(error)
    stale = faiss_index.stale_reason(index, vectors)
    if stale is not None:
        return None, stale
    return RunIndex(folder, names, indices, vectors, mean, index, info), ""


def open_index(
    run: TrainedRun, kind: str = "auto", rebuild: bool = False, progress: bool = True, seed: int | None = None
) -> RunIndex:
    """The search index of trained run `run` (a `TrainedRun`) over its own images, built (embedding every
    image once) when missing, damaged, of another kind or older than the run's checkpoint, or when `rebuild`."""
    if kind not in faiss_index.KINDS:
        raise ConfigError(f"--kind {kind}: choose one of {', '.join(faiss_index.KINDS)}")
    data = run.config.data
    source = open_source(data.data, root=data.data_root, split=data.split)
    wanted = {
        "format": INDEX_FORMAT,
        "checkpoint": run.run_dir.checkpoint_fingerprint(),
        "data": _data_spec({"data": data.data, "root": data.data_root, "split": data.split}),
        "kind": kind,
    }
    folder = run.run_dir.index_dir
    if not rebuild:
        existing, why = _read_existing(folder, wanted)
        if existing is not None:
            return existing
        log.info("building the search index of %s: %s", run.run_dir.root, why)
    seed = int(run.config.run.seed) if seed is None else int(seed)
    return _build(run, source, folder, wanted, seed, progress)


def _build(
    run: TrainedRun, source: ImageSource, folder: Path, wanted: dict[str, Any], seed: int, progress: bool
) -> RunIndex:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").unlink(missing_ok=True)  # from here until the end the folder is incomplete
    names, indices, skipped = write_npy(run, source, folder / "vectors.npy", None, progress, "index")
    for name, reason in skipped:
        log.warning("%s: not indexed (%s)", name, reason)
    atomic_write_text(folder / "names.txt", "".join(f"{name}\n" for name in names))
    atomic_save_numpy(folder / "rows.npy", np.asarray(indices, dtype=np.int64))
    mean = _centre_file(folder / "vectors.npy")
    atomic_save_numpy(folder / "mean.npy", mean)
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    index = faiss_index.build_index(vectors, wanted["kind"], seed)
    faiss_index.save_index(index, folder / "index.faiss")
    info = {**wanted, "rows": len(names), "dim": int(vectors.shape[1]), "built_kind": faiss_index.kind_of(index),
            "seed": seed, "skipped": len(skipped)}  # fmt: skip
    atomic_write_text(folder / "index.json", json.dumps(info, indent=1) + "\n")
    log.info("indexed %d images of %s (%s, %d dimensions)", len(names), source.description,
             info["built_kind"], info["dim"])  # fmt: skip
    return RunIndex(folder, names, np.asarray(indices, dtype=np.int64), vectors, mean, index, info)
