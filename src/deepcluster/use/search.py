"""A trained run's search index: its images' embeddings and a faiss index over them, kept in RUN/index/.

    index.json      what the index was built from: the checkpoint's SHA-256, the data, the kind; written last
    vectors.npy     float32 [N, d]: the run's embedding of every readable image (`TrainedRun.embed`),
                    PCA-whitened to d = min(256, D, N / 8) dimensions and L2-normalised (whitening.npz;
                    centred only below 256 images, see `whitening_for`)
    names.txt       one image name per row; rows.npy: the source index of each row
    index.faiss     `cluster.index` over the embeddings (exact up to 50,000 images, IVF above: see that module)

Why whitened (the DeepCluster paper's preprocessing for clustering, and the usual one for retrieval): a ReLU
network's raw embeddings all lie in one orthant, so unrelated images already have cosine 0.95 (median over
pairs in tests/use/test_search.py's run) and a copy cannot stand out. Centring alone helps there, not enough on real
photos: measured on 2,000 training images of each set with 2-minute runs (benchmarks/use.py; at the threshold
that lets 5 of the 2 million pairs of distinct images through), Imagenette's half-size, JPEG q50 and half-size
q75 copies are found 29 %, 55 % and 25 % of the time centred, 92 %, 100 % and 83 % whitened to 256 dimensions
(CIFAR-10: 11 %, 83 %, 9 % -> 72 %, 100 %, 58 %, and +15 % brightness 16 % -> 94 %). Queries go through the
same whitening, fitted on the indexed embeddings (a sample of `WHITENING_SAMPLE` above that many).

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
from deepcluster.cluster.preprocess import PCAWhitening
from deepcluster.config import ConfigError
from deepcluster.data.sources import ImageSource, open_source
from deepcluster.storage import atomic_save_numpy, atomic_write, atomic_write_text
from deepcluster.use.outputs import TrainedRun, write_npy

log = logging.getLogger("deepcluster")

INDEX_FORMAT = 2
DUPLICATE_THRESHOLD = 0.8
"""`deepcluster duplicates`' default (cosine of whitened embeddings), from benchmarks/use.py on 2,000 training
images of Imagenette and CIFAR-10 (2-minute runs): at 0.8, 2 and 0 of their 2 million pairs of distinct images
pass, while over 99 % of JPEG q50 copies are found (1 % of them fall below 0.84 and 0.82) and 52 % and 48 % of
the copies of all five kinds (half size, JPEG, both, 90 % crop, +15 % brightness); at 0.7, 10 and 3 pairs pass
and 69 % and 74 % of the copies are found."""
WHITENED_DIMS, ROWS_PER_DIM, MIN_WHITENED, WHITENING_SAMPLE = 256, 8, 32, 100_000


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
    """float32 [N, d], memory-mapped: the embeddings, whitened and L2-normalised (what the index holds)."""
    whitening: PCAWhitening
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

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """`TrainedRun.embed` values [Q, D] as the index holds them: whitened, L2-normalised."""
        return self.whitening.apply(np.asarray(embeddings, dtype=np.float32))

    def search(self, embeddings: np.ndarray, k: int = 10, queries: list[str] | None = None) -> Hits:
        """The `k` indexed images nearest each of `embeddings` (float32 [Q, D], `TrainedRun.embed` values)."""
        return self.search_vectors(self.project(embeddings), k, queries)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, queries: list[str] | None = None) -> Hits:
        """The `k` indexed images nearest each of `vectors` (rows of `self.vectors`, or `project`ed)."""
        scores, rows = faiss_index.search(self.index, vectors, k)
        names = [[self.names[r] for r in row if r >= 0] for row in rows]
        indices = np.where(rows >= 0, self.indices[np.maximum(rows, 0)], -1)
        return Hits(queries or [f"<query {q}>" for q in range(len(rows))], rows, scores, names, indices)

    def duplicates(self, threshold: float = DUPLICATE_THRESHOLD) -> list[list[int]]:
        """Groups of rows whose embeddings are near-duplicates (`cluster.index.duplicate_groups`)."""
        return faiss_index.duplicate_groups(self.vectors, threshold, self.index)


def whitening_for(n: int, dim: int) -> PCAWhitening:
    """The index's whitening for N embeddings of D dimensions: PCA-whitening to min(256, D, N / 8) dimensions,
    so that each is fitted on 8 rows or more; under `MIN_WHITENED` of them (a few hundred images), centring
    only (all min(D, N - 1) principal axes, not scaled: the same cosines as the centred embeddings), since too
    few whitened dimensions join unrelated images (tests/use/test_search.py's 62 images: 7 dimensions made a false
    pair and missed a resized copy); no PCA at all under 2 images."""
    kept = min(WHITENED_DIMS, dim, n // ROWS_PER_DIM)
    if kept >= MIN_WHITENED:
        return PCAWhitening(kept)
    return PCAWhitening(min(dim, n - 1), eigen_power=0.0) if n >= 2 else PCAWhitening(0)


def _whiten(raw: Path, out: Path, seed: int, rows: int = 1 << 14) -> PCAWhitening:
    """Fit the whitening on the embeddings in `raw` (.npy) and write the whitened rows to `out`, a block at a
    time (atomically)."""
    embeddings = np.load(raw, mmap_mode="r")
    n, dim = embeddings.shape
    whitening = whitening_for(n, dim)
    whitening.fit(embeddings, sample_size=min(n, WHITENING_SAMPLE), seed=seed)
    kept = whitening.dim if whitening.uses_pca else dim

    def write(handle: Any) -> None:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<f4", "fortran_order": False, "shape": (n, kept)}
        )
        for start in range(0, n, rows):
            handle.write(whitening.apply(np.asarray(embeddings[start : start + rows])).tobytes())

    atomic_write(out, write)
    return whitening


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
        with np.load(folder / "whitening.npz", allow_pickle=False) as saved:
            whitening = PCAWhitening.from_state_dict(dict(saved))
        names = (folder / "names.txt").read_text().splitlines()
        indices = np.load(folder / "rows.npy", allow_pickle=False)
    except (OSError, ValueError) as error:
        return None, f"its files are damaged ({error})"
    for key, what in (
        ("format", "an older format"),
        ("checkpoint", "the network trained on since"),
        ("data", "another data set"),
        ("kind", "another kind"),
    ):
        if info.get(key) != wanted[key]:
            return None, f"it was built for {what}"
    if not (
        len(names) == len(indices) == vectors.shape[0] == info.get("rows")
    ) or whitening.input_dim != info.get("embedding_dim"):
        return None, "its files disagree on the number of images"
    try:
        index = faiss_index.load_index(folder / "index.faiss")
    except faiss_index.IndexFileError as error:
        return None, str(error)
    stale = faiss_index.stale_reason(index, vectors)
    if stale is not None:
        return None, stale
    return RunIndex(folder, names, indices, vectors, whitening, index, info), ""


def open_index(
    run: TrainedRun, kind: str = "auto", rebuild: bool = False, progress: bool = True, seed: int | None = None
) -> RunIndex:
    """The search index of trained run `run` (a `TrainedRun`) over its own images, built (embedding every
    image once) when missing, damaged, of another kind or older than the run's checkpoint, or when `rebuild`."""
    if kind not in faiss_index.KINDS:
        raise ConfigError(f"--kind {kind}: choose one of {', '.join(faiss_index.KINDS)}")
    data = run.config.data
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
    source = open_source(
        data.data, root=data.data_root, split=data.split
    )  # only to build: a folder is listed
    return _build(run, source, folder, wanted, seed, progress)


def _build(
    run: TrainedRun, source: ImageSource, folder: Path, wanted: dict[str, Any], seed: int, progress: bool
) -> RunIndex:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").unlink(missing_ok=True)  # from here until the end the folder is incomplete
    names, indices, skipped = write_npy(run, source, folder / "embeddings.npy", None, progress, "index")
    for name, reason in skipped:
        log.warning("%s: not indexed (%s)", name, reason)
    atomic_write_text(folder / "names.txt", "".join(f"{name}\n" for name in names))
    atomic_save_numpy(folder / "rows.npy", np.asarray(indices, dtype=np.int64))
    whitening = _whiten(folder / "embeddings.npy", folder / "vectors.npy", seed)
    (folder / "embeddings.npy").unlink()
    atomic_write(folder / "whitening.npz", lambda handle: np.savez(handle, **whitening.state_dict()))
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    index = faiss_index.build_index(vectors, wanted["kind"], seed)
    faiss_index.save_index(index, folder / "index.faiss")
    info = {
        **wanted,
        "rows": len(names),
        "dim": int(vectors.shape[1]),
        "embedding_dim": whitening.input_dim,
        "built_kind": faiss_index.kind_of(index),
        "seed": seed,
        "skipped": len(skipped),
    }
    atomic_write_text(folder / "index.json", json.dumps(info, indent=1) + "\n")
    log.info(
        "indexed %d images of %s (%s, %d dimensions)",
        len(names),
        source.description,
        info["built_kind"],
        info["dim"],
    )
    return RunIndex(folder, names, np.asarray(indices, dtype=np.int64), vectors, whitening, index, info)
