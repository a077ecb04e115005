"""Similarity search over L2-normalised embeddings [N, D] (inner product = cosine), and near-duplicate groups.

Kinds: "flat" (exact `IndexFlatIP`); "ivf" (`IndexIVFFlat`, inner product, nlist = round(4 sqrt(N)), faiss's
spherical k-means on `TRAIN_POINTS_PER_LIST * nlist` rows sampled with `seed`); "hnsw" (`IndexHNSWFlat`, inner
product, M 32, efConstruction 40, levels from a generator seeded with `seed`). Same vectors, kind and seed:
same index, same results.

Defaults, from `benchmarks/search.py` (benchmarks/results/search-cpu-2026-12-02.md: D 128, a mixture of 2,000
Gaussian centres, 2-core Zen 4): "auto" is exact up to `EXACT_MAX_VECTORS` = 50,000, where a query costs under
1 ms and exact `duplicate_groups` (all pairs) 17 s; at 100,000 they cost 2 ms and 98 s, while IVF finds 99.3 %
of the exact top 10 in 0.09 ms and the duplicate groups in 2.5 s. Above it "auto" builds IVF, not HNSW: at 1M
IVF builds in 22 s (HNSW 56-77 s), holds 506 MB (748) and at nprobe 16 finds 100 % of the top 10 (HNSW 78 % at
efSearch 64, 87 % at 128) in 0.13 ms a query (batch). `NPROBE` = 16 of the 900-4,000 lists: recall@10 0.960 at
50k, 0.993 at 100k, 1.000 at 1M (nprobe 32: +1 point at 50k for 1.5-2x the time). `EF_SEARCH` = 64 (HNSW, when
asked for): 0.9999 at 100k. Structureless (uniform) vectors defeat both (0.16 IVF, 0.33 HNSW at 100k);
embeddings are clustered, which IVF relies on. `search(..., nprobe=...)` trades time for recall.

`duplicate_groups` takes its threshold from the caller: on synthetic vectors a resized or re-encoded copy keeps a
cosine of 0.97-0.999 (noise of norm 0.05-0.25 in the tests) while another image of the same class sits lower
(about 0.5 within the benchmark's mixture); the run's index (`deepcluster.use.search`) chose its default, 0.8, on
a trained network's whitened embeddings of real copies (benchmarks/use.py).

`search` returns [Q, k]: places beyond what the index found (k > N, or an approximate search that found fewer)
hold id -1 and score -inf (padded, never clipped). Files: a 4096-byte header (magic line, JSON: format, kind,
N, D, payload length, SHA-256), then faiss's own serialisation (no pickle); `load_index` checks length and
checksum before faiss reads a byte; `stale_reason` says whether an index still fits the embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import faiss
import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components

from deepcluster.cluster.preprocess import as_float32_matrix
from deepcluster.config import ConfigError
from deepcluster.storage.framed import (
    HEADER_SIZE,
    FrameError,
    PayloadSink,
    check_length,
    parse_header,
    verified_payload,
    write_framed,
)

KINDS = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX_VECTORS = 50_000  # "auto": exact up to this many vectors, IVF above
IVF_LISTS_PER_SQRT_N, TRAIN_POINTS_PER_LIST, NPROBE = 4, 64, 16  # IVF: nlist per sqrt(N), training, search
HNSW_M, EF_CONSTRUCTION, EF_SEARCH = 32, 40, 64
DUPLICATE_NEIGHBOURS = 16  # neighbours per vector that duplicate_groups examines on an approximate index

FILE_FORMAT, MAGIC = 1, b"DEEPCLUSTER-INDEX\n"
_NORM_TOLERANCE = 1e-2  # |norm - 1| allowed (float16 embeddings cast to float32 stay inside it)
_RANGE_RESULTS = 1 << 24  # query rows per exact range search: at most this many (query, vector) pairs
_KNN_ROWS = 4096  # query rows per k-NN search in duplicate_groups
_STALE_ROWS = 16  # stored rows that stale_reason compares with the embeddings


class IndexFileError(ConfigError):
    """An index file that cannot be used (the caller rebuilds the index)."""


class MissingIndex(IndexFileError):
    """No index file at the path."""


class DamagedIndex(IndexFileError):
    """Truncated, corrupt or not an index file written by `save_index`."""


@dataclass(frozen=True)
class IndexInfo:
    """What an index file's header says: kind ("flat", "ivf", "hnsw"), vectors, dimension, payload."""

    kind: str
    n: int
    dim: int
    payload_bytes: int
    sha256: str


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    arr, step = as_float32_matrix(x, name), 1 << 16
    for start in range(0, arr.shape[0], step):
        norms = np.linalg.norm(arr[start : start + step], axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > _NORM_TOLERANCE)
        if bad.size:
            raise ValueError(
                f"{name} must be L2-normalised (inner product = cosine); row {start + int(bad[0])} has norm "
                f"{norms[bad[0]]:.4g}. Normalise them first (deepcluster.cluster.l2_normalize)."
            )
    return arr


def kind_of(index: faiss.Index) -> str:
    """ "flat", "ivf" or "hnsw" for an index this module builds (ValueError for any other)."""
    for kind, cls in (("flat", faiss.IndexFlat), ("ivf", faiss.IndexIVF), ("hnsw", faiss.IndexHNSW)):
        if isinstance(index, cls):
            return kind
    raise ValueError(f"not an index of this module: {type(index).__name__}")


def ivf_lists(n: int) -> int:
    """nlist of an IVF index over n vectors: round(4 * sqrt(n)), at least 1 and at most n."""
    return max(1, min(n, round(IVF_LISTS_PER_SQRT_N * math.sqrt(n))))


def build_index(
    vectors: np.ndarray,
    kind: str = "auto",
    seed: int = 0,
    *,
    exact_max: int = EXACT_MAX_VECTORS,
    nlist: int | None = None,
) -> faiss.Index:
    """An inner-product index holding the rows of `vectors` (float32 [N, D], L2-normalised) with ids 0..N-1.

    `kind` is one of KINDS; "auto" is "flat" up to `exact_max` rows, else "ivf" (`nlist` lists, default
    `ivf_lists(N)`). IVF: faiss's k-means seed and the training sample come from `seed`; HNSW: the levels."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    x = _unit_rows(vectors, "vectors")
    n, dim = x.shape
    kind = ("flat" if n <= exact_max else "ivf") if kind == "auto" else kind
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        lists = min(n, nlist) if nlist is not None else ivf_lists(n)
        if lists < 1:
            raise ValueError(f"nlist must be >= 1; got {nlist}")
        quantizer = faiss.IndexFlatIP(dim)  # the Python wrapper keeps it alive with the index
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed) % (1 << 31)
        index.cp.spherical = True
        index.cp.min_points_per_centroid = 1  # small N: train anyway, without faiss's warning
        index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
        rows = min(n, TRAIN_POINTS_PER_LIST * lists)
        index.train(x[np.sort(np.random.default_rng(seed).choice(n, size=rows, replace=False))])
        index.nprobe = NPROBE
    else:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = EF_CONSTRUCTION, EF_SEARCH
        index.hnsw.rng = faiss.RandomGenerator(int(seed))
    index.add(x)
    if kind == "ivf":
        index.make_direct_map()  # reconstruct(i), which stale_reason uses
    return index


def search(
    index: faiss.Index, queries: np.ndarray, k: int, *, nprobe: int = NPROBE, ef_search: int = EF_SEARCH
) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar stored vectors of each query (float32 [Q, D], L2-normalised): scores float32 [Q, k]
    (cosine, best first) and ids int64 [Q, k]. Places beyond what the index found (k > N) hold id -1 and
    score -inf. `nprobe` (IVF) and `ef_search` (HNSW, raised to k when smaller) apply to this call only."""
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer; got {k}")
    k, q = int(k), _unit_rows(queries, "queries")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have {q.shape[1]} dimensions, the index {index.d}")
    found = min(k, index.ntotal)
    scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    ids = np.full((q.shape[0], k), -1, dtype=np.int64)
    if found:
        kind = kind_of(index)
        params = faiss.SearchParametersIVF(nprobe=int(nprobe)) if kind == "ivf" else None
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(int(ef_search), found))
        got_scores, got_ids = index.search(q, found, params=params)
        scores[:, :found] = np.where(got_ids >= 0, got_scores, -np.inf)
        ids[:, :found] = got_ids
    return scores, ids


# ------------------------------------------------------------------------------------------------ files
def save_index(index: faiss.Index, path: str | Path) -> None:
    """Write `index` to `path` atomically (a temporary file beside it, then a rename); a failed write leaves
    the old file and raises `storage.WriteFailed` for the errors a user can fix (space, permissions)."""
    fields = {"format": FILE_FORMAT, "kind": kind_of(index), "n": int(index.ntotal), "dim": int(index.d)}

    def payload(sink: PayloadSink) -> None:
        writer = faiss.PyCallbackIOWriter(sink.write)
        faiss.write_index(index, writer)
        del writer  # flushes what it holds

    write_framed(path, MAGIC, {**fields, "faiss": faiss.__version__}, payload)


def _header(path: Path, head: bytes) -> tuple[IndexInfo, dict]:
    """The index file's header fields, checked (DamagedIndex)."""
    try:
        fields = parse_header(head, MAGIC)
        if fields is None:
            raise DamagedIndex(f"{path} is not an index file written by deepcluster (no header); rebuild it")
        fmt, kind, n, dim = int(fields["format"]), str(fields["kind"]), int(fields["n"]), int(fields["dim"])
        info = IndexInfo(kind, n, dim, int(fields["length"]), str(fields["sha256"]))
    except (FrameError, ValueError, KeyError, TypeError) as error:
        raise DamagedIndex(f"{path}: the header is damaged ({error}); rebuild the index") from None
    if fmt != FILE_FORMAT:
        raise DamagedIndex(f"{path}: index file format {fmt}, this version reads {FILE_FORMAT}; rebuild it")
    return info, fields


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise MissingIndex(f"no index file at {path}; build the index first") from None


def read_index_info(path: str | Path) -> IndexInfo:
    """The header of an index file, without reading the index (MissingIndex, DamagedIndex)."""
    path = Path(path)
    with _open(path) as handle:
        info, fields = _header(path, handle.read(HEADER_SIZE))
    try:
        check_length(path, fields)
    except FrameError as error:
        raise DamagedIndex(f"{path} is {error}; rebuild the index") from None
    return info


def load_index(path: str | Path) -> faiss.Index:
    """The index saved at `path`; MissingIndex or DamagedIndex (length, checksum, faiss's parse) otherwise."""
    path = Path(path)
    with _open(path) as handle:
        info, fields = _header(path, handle.read(HEADER_SIZE))
        try:
            payload = verified_payload(handle, path, fields)
        except FrameError as error:
            raise DamagedIndex(f"{path} is damaged ({error}); rebuild the index") from None
        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(payload.read))
        except RuntimeError as error:
            raise DamagedIndex(f"{path}: faiss cannot read the index ({error}); rebuild it") from None
    if (index.ntotal, index.d) != (info.n, info.dim) or kind_of(index) != info.kind:
        raise DamagedIndex(f"{path}: the index does not match its header; rebuild it")
    return index


def stale_reason(index: faiss.Index, vectors: np.ndarray, rows: int = _STALE_ROWS) -> str | None:
    """Why `index` no longer fits `vectors` [N, D] (None when it fits): another N or D, or one of `rows`
    evenly spaced stored rows (first and last included) that differs from the embeddings. Reads only those
    rows of `vectors`, so a memory-mapped file costs little."""
    n, dim = np.shape(vectors)
    if index.d != dim:
        return f"the index has {index.d} dimensions, the embeddings {dim}"
    if index.ntotal != n:
        return f"the index holds {index.ntotal} vectors, the embeddings have {n} rows"
    for row in np.unique(np.linspace(0, n - 1, num=min(rows, n)).round().astype(np.int64)) if n else ():
        stored = index.reconstruct(int(row))
        if not np.allclose(stored, np.asarray(vectors[row], dtype=np.float32), rtol=0.0, atol=1e-6):
            return f"row {int(row)} of the index differs from the embeddings (they were computed again)"
    return None


# ------------------------------------------------------------------------------------------------ duplicates
def _similar_pairs(index: faiss.Index, x: np.ndarray, threshold: float, neighbours: int):
    """(rows, ids) of pairs of distinct rows with cosine >= threshold, one block of query rows at a time."""
    n = x.shape[0]
    if kind_of(index) == "flat":  # exact: every pair above the radius (faiss keeps sim > radius)
        radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
        step = max(1, min(_KNN_ROWS, _RANGE_RESULTS // max(n, 1)))
        for start in range(0, n, step):
            lims, _, found = index.range_search(x[start : start + step], radius)
            rows = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
            yield rows[rows != found], found[rows != found]
    else:  # approximate: each vector's `neighbours` nearest, cut at the threshold
        for start in range(0, n, _KNN_ROWS):
            scores, found = search(index, x[start : start + _KNN_ROWS], neighbours + 1)
            rows = start + np.arange(len(found))[:, None]
            keep = (scores >= threshold) & (found >= 0) & (found != rows)
            yield np.broadcast_to(rows, found.shape)[keep], found[keep]


def _join(labels: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Component labels after joining the components of both ends of every pair (union of components)."""
    rows, found = (np.concatenate(parts) for parts in zip(*pairs, strict=True))
    edges = (np.ones(rows.size, dtype=np.int8), (labels[rows], labels[found]))
    graph = scipy.sparse.coo_matrix(edges, shape=(labels.size, labels.size))
    return connected_components(graph, directed=False)[1][labels]


def duplicate_groups(
    vectors: np.ndarray,
    threshold: float,
    index: faiss.Index | None = None,
    *,
    neighbours: int = DUPLICATE_NEIGHBOURS,
    seed: int = 0,
) -> list[list[int]]:
    """Groups of near-duplicate rows: the connected components (of two rows or more) of the graph whose edges
    join rows with cosine similarity >= `threshold`. Largest group first (ties: smallest first member), rows
    ascending inside each group; rows without a duplicate are left out.

    `index` (built over `vectors` if None: `kind="auto"`, `seed`) decides how pairs are found: an exact index
    finds every pair (range search); an approximate one looks at each row's `neighbours` nearest only, so a
    group is still found whole through chains of neighbours, but a pair the search misses is missed."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1] (a cosine similarity); got {threshold}")
    x = _unit_rows(vectors, "vectors")
    index = build_index(x, seed=seed) if index is None else index
    if (index.ntotal, index.d) != x.shape:
        raise ValueError(
            f"the index holds {index.ntotal} x {index.d} vectors, not {x.shape[0]} x {x.shape[1]}"
        )
    labels, pending = np.arange(x.shape[0]), []
    for rows, found in _similar_pairs(index, x, threshold, neighbours):
        pending.append((rows, found))
        if sum(part[0].size for part in pending) >= max(x.shape[0], 1 << 20):
            labels, pending = _join(labels, pending), []
    if pending:
        labels = _join(labels, pending)
    order = np.argsort(labels, kind="stable")
    groups = [part.tolist() for part in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)]
    return sorted((group for group in groups if len(group) > 1), key=lambda group: (-len(group), group[0]))
