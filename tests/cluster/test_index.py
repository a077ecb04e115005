"""The similarity index (`cluster.index`): real faiss indexes at small size, no mocks."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from deepcluster.cluster.index import (
    HEADER_SIZE,
    DamagedIndex,
    MissingIndex,
    build_index,
    duplicate_groups,
    kind_of,
    load_index,
    read_index_info,
    save_index,
    search,
    stale_reason,
)

KINDS = ("flat", "ivf", "hnsw")


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def _uniform(n: int, dim: int, seed: int) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((n, dim)))


def _mixture(n: int, dim: int, seed: int, centres: int = 40) -> np.ndarray:
    """Unit vectors around `centres` random centres (noise as large as the centre), like embeddings."""
    means = _uniform(centres, dim, 1000)
    rng = np.random.default_rng(seed)
    return _unit(means[rng.integers(centres, size=n)] + rng.standard_normal((n, dim)) / np.sqrt(dim))


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.isin(f, t).mean() for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return _mixture(3000, 32, seed=0)


@pytest.fixture(scope="module")
def indexes(vectors: np.ndarray) -> dict[str, faiss.Index]:
    return {kind: build_index(vectors, kind, seed=0) for kind in KINDS}


def test_an_exact_index_finds_each_vector_itself_first(vectors: np.ndarray) -> None:
    index = build_index(vectors)  # auto: 3,000 vectors are below the exact threshold
    assert kind_of(index) == "flat"
    scores, ids = search(index, vectors[:100], 5)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and scores.shape == (100, 5)
    np.testing.assert_array_equal(ids[:, 0], np.arange(100))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert (scores[:, 1] < 0.99).all()


def test_auto_switches_to_ivf_above_the_threshold(vectors: np.ndarray) -> None:
    assert kind_of(build_index(vectors, exact_max=len(vectors))) == "flat"
    assert kind_of(build_index(vectors, exact_max=len(vectors) - 1)) == "ivf"


@pytest.mark.parametrize(("kind", "data", "bound"), [("ivf", "mixture", 0.95), ("hnsw", "uniform", 0.95)])
def test_approximate_recall_at_10_is_high(kind: str, data: str, bound: float) -> None:
    make = _mixture if data == "mixture" else _uniform
    database, queries = make(4000, 32, seed=1), make(300, 32, seed=2)  # queries are not in the database
    _, truth = search(build_index(database, "flat"), queries, 10)
    index = build_index(database, kind, seed=0)
    _, found = search(index, queries, 10)
    assert _recall(found, truth) >= bound
    # the bound can fail: the narrowest search (one IVF list; HNSW's efSearch = k) misses neighbours
    _, narrow = search(index, queries, 10, nprobe=1, ef_search=1)
    assert _recall(narrow, truth) < bound


@pytest.mark.parametrize("kind", KINDS)
def test_the_save_load_round_trip_gives_the_same_results(
    kind: str, vectors: np.ndarray, indexes: dict[str, faiss.Index], tmp_path: Path
) -> None:
    path = tmp_path / "sub" / f"{kind}.index"
    save_index(indexes[kind], path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    info = read_index_info(path)
    assert (info.kind, info.n, info.dim) == (kind, 3000, 32)
    loaded = load_index(path)
    assert kind_of(loaded) == kind
    queries = _mixture(50, 32, seed=7)
    for got, want in zip(search(loaded, queries, 10), search(indexes[kind], queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)
    assert stale_reason(loaded, vectors) is None


def test_a_save_replaces_the_old_file(vectors: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "a.index"
    save_index(build_index(vectors[:100], "flat"), path)
    save_index(build_index(vectors, "flat"), path)
    assert load_index(path).ntotal == 3000


def test_a_missing_or_damaged_file_raises_a_clear_error(
    indexes: dict[str, faiss.Index], tmp_path: Path
) -> None:
    with pytest.raises(MissingIndex, match="no index file"):
        load_index(tmp_path / "none.index")
    path = tmp_path / "a.index"
    save_index(indexes["ivf"], path)
    good = path.read_bytes()

    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DamagedIndex, match="truncated"):
        load_index(path)
    flipped = bytearray(good)
    flipped[HEADER_SIZE + len(good) // 3] ^= 0xFF  # one byte of the payload
    path.write_bytes(bytes(flipped))
    with pytest.raises(DamagedIndex, match="checksum"):
        load_index(path)
    path.write_bytes(good[:20] + b"#" + good[21:])  # the header's JSON
    with pytest.raises(DamagedIndex, match="header"):
        load_index(path)
    faiss.write_index(indexes["flat"], str(path))  # faiss's own file, without our header
    with pytest.raises(DamagedIndex, match="not an index file"):
        load_index(path)
    path.write_bytes(b"")
    with pytest.raises(DamagedIndex):
        read_index_info(path)


def test_a_stale_index_is_detected(vectors: np.ndarray, indexes: dict[str, faiss.Index]) -> None:
    for kind, index in indexes.items():
        assert stale_reason(index, vectors) is None, kind
        assert "3000 vectors" in stale_reason(index, vectors[:-1]), kind
        assert "dimensions" in stale_reason(index, _uniform(3000, 16, seed=3)), kind
        recomputed = vectors.copy()
        recomputed[-1] = _uniform(1, 32, seed=4)[0]  # the same N and D, other embeddings
        assert "differs" in stale_reason(index, recomputed), kind


@pytest.mark.parametrize("kind", KINDS)
def test_k_above_n_is_padded_with_minus_one_and_minus_inf(kind: str) -> None:
    database = _uniform(6, 8, seed=5)
    index = build_index(database, kind, seed=0, nlist=2)
    scores, ids = search(index, database[:3], 10)
    assert scores.shape == ids.shape == (3, 10)
    assert (ids[:, 6:] == -1).all() and np.isneginf(scores[:, 6:]).all()
    for row in range(3):
        assert sorted(ids[row, :6].tolist()) == list(range(6))
        assert ids[row, 0] == row and np.isfinite(scores[row, :6]).all()


def test_bad_input_is_refused(vectors: np.ndarray, indexes: dict[str, faiss.Index]) -> None:
    with pytest.raises(ValueError, match="L2-normalised"):
        build_index(vectors * 2)
    with pytest.raises(ValueError, match="kind"):
        build_index(vectors, "lsh")
    with pytest.raises(ValueError, match="dimensions"):
        search(indexes["flat"], _uniform(2, 16, seed=0), 3)
    with pytest.raises(ValueError, match="k must be"):
        search(indexes["flat"], vectors[:2], 0)
    with pytest.raises(ValueError, match="threshold"):
        duplicate_groups(vectors, 0.0)
    with pytest.raises(ValueError, match="holds"):
        duplicate_groups(vectors[:100], 0.95, indexes["flat"])


@pytest.fixture(scope="module")
def planted() -> np.ndarray:
    """Unrelated vectors with planted copies: exact copies of row 3 at rows 10, 500 and 1999; a near copy
    (noise of norm 0.05, cosine ~0.999) of row 42 at row 7 and of row 800 at row 801; and a similar but
    different vector (cosine ~0.8: another image of the same class) of row 99 at row 100."""
    x = _uniform(2000, 64, seed=11)  # 64 dimensions: unrelated pairs stay below cosine ~0.7
    rng = np.random.default_rng(12)
    x[[10, 500, 1999]] = x[3]
    for copy, source, noise in ((7, 42, 0.05), (801, 800, 0.05), (100, 99, 0.75)):
        x[copy] = x[source] + noise * _unit(rng.standard_normal((1, 64)))[0]
    return _unit(x)


@pytest.mark.parametrize("kind", [None, *KINDS])
def test_duplicate_groups_find_the_planted_copies(kind: str | None, planted: np.ndarray) -> None:
    assert float(planted[99] @ planted[100]) < 0.9 and float(planted[7] @ planted[42]) > 0.99
    index = None if kind is None else build_index(planted, kind, seed=0)
    groups = duplicate_groups(planted, 0.95, index)
    assert groups == [[3, 10, 500, 1999], [7, 42], [800, 801]]  # largest first, then by first member
    # a lower threshold also joins the same-class pair, a higher one keeps only exact copies
    assert [99, 100] in duplicate_groups(planted, 0.7, index)
    assert duplicate_groups(planted, 0.9999, index) == [[3, 10, 500, 1999]]


def test_duplicate_groups_follow_chains() -> None:
    """a ~ b and b ~ c put a, b and c in one group even where a and c are below the threshold."""
    x = _uniform(500, 64, seed=13)
    direction = _uniform(1, 64, seed=14)[0]
    x[200] = x[100] + 0.25 * direction
    x[300] = x[100] + 0.5 * direction
    x = _unit(x)
    assert float(x[100] @ x[300]) < 0.95 < min(float(x[100] @ x[200]), float(x[200] @ x[300]))
    assert duplicate_groups(x, 0.95) == [[100, 200, 300]]


@pytest.mark.parametrize("kind", KINDS)
def test_two_builds_with_the_same_seed_give_the_same_results(kind: str, vectors: np.ndarray) -> None:
    queries = _mixture(100, 32, seed=9)
    first = search(build_index(vectors, kind, seed=5), queries, 10)
    second = search(build_index(vectors, kind, seed=5), queries, 10)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
