"""Tests for the report's thumbnail cache and cluster grids, on small pattern images written by the tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcluster.data.decode import square_image
from deepcluster.data.sources import ArraySource, FolderSource, ImageSource, open_source
from deepcluster.report.grids import all_clusters_overview, cluster_grids, cluster_summary
from deepcluster.report.picture import Picture
from deepcluster.report.thumbnails import GREY, ThumbnailCache
from synthetic import write_pattern_npz

SIZE = 32  # thumbnail size in these tests: gaps of one pixel
CLASS_NAMES = ["horizontal", "vertical", "diagonal", "checkers"]
# cluster id -> {true class: count}; the pattern images' classes are index % 4, 40 images each
DESIGN = {
    5: {2: 30, 0: 10},
    2: {1: 20, 3: 10},
    7: {2: 10, 3: 15},
    3: {1: 20, 0: 5},
    0: {3: 15, 0: 5},
    9: {0: 20},
}


class CountingSource(ImageSource):
    """A real source whose loads are recorded (to see what was decoded, and how often)."""

    def __init__(self, inner: ImageSource) -> None:
        self.inner = inner
        self.description = inner.description
        self.loads: list[int] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.inner)

    def load(self, index: int) -> Image.Image:
        with self._lock:
            self.loads.append(int(index))
        return self.inner.load(index)

    def name(self, index: int) -> str:
        return self.inner.name(index)

    @property
    def labels(self) -> np.ndarray | None:
        return self.inner.labels


@pytest.fixture(scope="module")
def patterns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_npz(tmp_path_factory.mktemp("data") / "patterns.npz", 160)


def expected_thumbnail(source: ImageSource, index: int, size: int = SIZE) -> np.ndarray:
    return np.asarray(square_image(source.load(index), size))


def designed_rows(source: ImageSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster labels, source indices and true labels of the rows of a labels.csv built from DESIGN, rows
    shuffled (so row number and source index differ)."""
    truth = source.labels
    assert truth is not None
    pools = {c: list(np.flatnonzero(truth == c)) for c in range(4)}
    indices, labels = [], []
    for cluster, counts in DESIGN.items():
        for true_class, count in counts.items():
            for _ in range(count):
                indices.append(pools[true_class].pop())
                labels.append(cluster)
    assert all(not pool for pool in pools.values())
    order = np.random.default_rng(1).permutation(len(indices))
    indices_array = np.asarray(indices, dtype=np.int64)[order]
    return np.asarray(labels, dtype=np.int64)[order], indices_array, truth[indices_array]


def angle_embed(
    labels: np.ndarray, indices: np.ndarray
) -> tuple[dict[int, int], Callable[[np.ndarray], np.ndarray]]:
    """A 2-D embedding in which one member per cluster (the centre) sits at angle 0 and the others in
    symmetric pairs at angles beyond 0.3 rad, scaled differently (normalisation must not matter): the centre
    member is nearest the mean direction. Returns {cluster: centre source index} and the embed function."""
    angles = np.zeros(int(indices.max()) + 1)
    scales = 1.0 + (np.arange(len(angles)) % 5)
    centres = {}
    for cluster in np.unique(labels):
        members = np.sort(indices[labels == cluster])
        centres[int(cluster)] = int(members[0])
        for number, member in enumerate(members[1:]):
            angles[member] = (0.3 + 0.01 * (number // 2)) * (1 if number % 2 == 0 else -1)

    def embed(source_indices: np.ndarray) -> np.ndarray:
        theta = angles[source_indices]
        return np.stack([np.cos(theta), np.sin(theta)], axis=1) * scales[source_indices, None]

    return centres, embed


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def tile_at(png: np.ndarray, canvas_shape: tuple[int, int], row: int, column: int) -> np.ndarray:
    """The thumbnail at (row, column) of a grid PNG. The canvas' top and bottom margins are equal
    (matplotlib's tight-box padding); it sits at the right, its right margin rounded to a pixel either way:
    the left edge is the one where the first gap column is white and the first tile's column is not."""
    height, width = canvas_shape
    top = (png.shape[0] - height) // 2
    nominal = png.shape[1] - top - width
    lefts = [
        left
        for left in range(nominal - 1, nominal + 2)
        if np.all(png[top : top + height, left] == 255)
        and not np.all(png[top + 1 : top + 1 + SIZE, left + 1] == 255)
    ]
    assert len(lefts) == 1, lefts
    y, x = top + 1 + row * (SIZE + 1), lefts[0] + 1 + column * (SIZE + 1)
    return png[y : y + SIZE, x : x + SIZE]


def test_thumbnails_are_made_once_only_for_requested_images_and_reused_by_a_new_cache(
    tmp_path: Path, patterns: Path
) -> None:
    source = CountingSource(open_source(str(patterns)))
    cache = ThumbnailCache(tmp_path / "thumbs", source, size=SIZE)
    assert not (tmp_path / "thumbs").exists()  # nothing is created before a thumbnail is asked for
    got = cache.get(np.array([3, 1, 3, 7]))
    assert got.shape == (4, SIZE, SIZE, 3) and got.dtype == np.uint8
    assert sorted(source.loads) == [1, 3, 7]  # only the requested images, each decoded once
    for row, index in enumerate([3, 1, 3, 7]):
        assert np.array_equal(got[row], expected_thumbnail(source.inner, index))
    assert not np.array_equal(got[0], got[1])
    # disk holds the made thumbnails only, not one row per source image
    assert (tmp_path / "thumbs" / f"thumbnails-{SIZE}.bin").stat().st_size == 3 * SIZE * SIZE * 3
    assert np.array_equal(cache.get(np.array([7, 1])), got[[3, 1]])
    assert sorted(source.loads) == [1, 3, 7] and cache.decoded == 3

    # a new cache object (a later report rebuild) reuses the files without decoding again
    again_source = CountingSource(open_source(str(patterns)))
    again = ThumbnailCache(tmp_path / "thumbs", again_source, size=SIZE, threads=1)
    assert np.array_equal(again.get(np.array([3, 1, 3, 7])), got)
    assert again_source.loads == []
    more = again.get(np.array([150, 1, 42]))
    assert sorted(again_source.loads) == [42, 150]
    assert np.array_equal(more[0], expected_thumbnail(source.inner, 150))
    assert np.array_equal(more[2], expected_thumbnail(source.inner, 42))
    assert cache.get(np.array([], dtype=np.int64)).shape == (0, SIZE, SIZE, 3)
    with pytest.raises(IndexError):
        cache.get(np.array([160]))

    # another source (here another image count) in the same folder starts afresh instead of mixing
    other = CountingSource(ArraySource(np.full((5, 8, 8, 3), 9, dtype=np.uint8)))
    fresh = ThumbnailCache(tmp_path / "thumbs", other, size=SIZE).get(np.array([1]))
    assert other.loads == [1] and np.all(fresh == 9)


def test_unreadable_image_gives_a_grey_tile_remembered_as_made(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for number, colour in enumerate([(250, 10, 10), (10, 250, 10), (10, 10, 250)]):
        Image.new("RGB", (20, 12), colour).save(folder / f"img{number}.png")
    good = (folder / "img0.png").read_bytes()
    (folder / "img1.png").write_bytes(good[: len(good) // 2])  # truncated
    (folder / "img3.png").write_bytes(b"not an image at all")
    source = CountingSource(FolderSource(folder))
    tiles = ThumbnailCache(tmp_path / "thumbs", source, size=SIZE).get(np.arange(4))
    assert np.all(tiles[1] == GREY) and np.all(tiles[3] == GREY)
    assert tuple(tiles[0, 5, 5]) == (250, 10, 10) and tuple(tiles[2, 5, 5]) == (10, 10, 250)
    later = CountingSource(FolderSource(folder))
    assert np.array_equal(ThumbnailCache(tmp_path / "thumbs", later, size=SIZE).get(np.arange(4)), tiles)
    assert later.loads == []  # the grey tiles too are not tried again


def test_cluster_summary_matches_a_hand_count() -> None:
    labels = np.array([4, 4, 4, 4, 1, 1, 1, 1, 8, 8])
    truth = np.array([0, 2, 2, -1, 3, 1, 3, 1, 5, 5])
    rows = cluster_summary(labels, truth, class_names=["a", "b", "c", "d"])
    assert [(r["cluster"], r["size"]) for r in rows] == [(1, 4), (4, 4), (8, 2)]  # ties: smaller id first
    # cluster 1: classes 1 and 3 tie (2 each): the smaller class wins; cluster 4: one unknown truth (-1)
    assert (rows[0]["dominant_class"], rows[0]["class_name"], rows[0]["purity"]) == (1, "b", 0.5)
    assert (rows[1]["dominant_class"], rows[1]["class_name"], rows[1]["labelled"]) == (2, "c", 3)
    assert rows[1]["purity"] == pytest.approx(2 / 3)
    assert (rows[2]["class_name"], rows[2]["purity"]) == ("5", 1.0)  # no name for class 5: its id
    plain = cluster_summary(labels)
    assert all(r["dominant_class"] is None and r["purity"] is None for r in plain)


def test_cluster_grids_largest_first_nearest_member_first_with_purity(tmp_path: Path, patterns: Path) -> None:
    source = open_source(str(patterns))
    labels, indices, truth = designed_rows(source)
    centres, embed = angle_embed(labels, indices)
    thumbs = ThumbnailCache(tmp_path / "thumbs", source, size=SIZE)
    pictures = cluster_grids(
        labels, indices, embed, thumbs, tmp_path / "report", n_clusters=4, per_cluster=9,
        true_labels=truth, class_names=CLASS_NAMES, max_members=1000,
    )  # fmt: skip
    assert all(isinstance(p, Picture) for p in pictures)
    # sizes 40, 30, 25, 25: descending, the tie in id order
    assert [p.path for p in pictures] == [f"clusters/cluster_{c}.png" for c in (5, 2, 3, 7)]
    assert [p.title for p in pictures] == [
        "Cluster 5 (40 images)",
        "Cluster 2 (30 images)",
        "Cluster 3 (25 images)",
        "Cluster 7 (25 images)",
    ]
    # by hand from DESIGN: 30/40 diagonal, 20/30 vertical, 20/25 vertical, 15/25 checkers
    expected = [
        "diagonal, purity 75.0%",
        "vertical, purity 66.7%",
        "vertical, purity 80.0%",
        "checkers, purity 60.0%",
    ]
    for picture, text in zip(pictures, expected, strict=True):
        assert f"Dominant true class: {text}." in picture.caption
    canvas = (3 * (SIZE + 1) + 1, 3 * (SIZE + 1) + 1)  # 9 thumbnails: 3 x 3
    for picture, cluster in zip(pictures, (5, 2, 3, 7), strict=True):
        png = read_png(tmp_path / "report" / picture.path)
        first = tile_at(png, canvas, 0, 0)
        assert np.array_equal(first, expected_thumbnail(source, centres[cluster]))
        members = set(indices[labels == cluster].tolist())
        last = tile_at(png, canvas, 2, 2)
        assert any(np.array_equal(last, expected_thumbnail(source, m)) for m in members - {centres[cluster]})
    assert not (tmp_path / "report" / "clusters" / "cluster_0.png").exists()  # only the n_clusters largest
    # purity is counted over the whole cluster, not over the members sampled for the centre
    sampled = cluster_grids(
        labels, indices, embed, thumbs, tmp_path / "sampled", n_clusters=1, true_labels=truth, max_members=4
    )
    assert "Dominant true class: 2, purity 75.0%." in sampled[0].caption  # no class names: the class id


def test_cluster_grids_sample_members_without_truth(tmp_path: Path, patterns: Path) -> None:
    source = CountingSource(open_source(str(patterns)))
    labels, indices, _ = designed_rows(source.inner)

    def pixels_embed(source_indices: np.ndarray) -> np.ndarray:
        images = np.stack([np.asarray(source.inner.load(int(i))) for i in source_indices])
        return images.reshape(len(images), -1).astype(np.float32)

    thumbs = ThumbnailCache(tmp_path / "thumbs", source, size=SIZE)
    run = [
        cluster_grids(labels, indices, pixels_embed, thumbs, tmp_path / name, n_clusters=2, max_members=10)
        for name in ("one", "two")
    ]
    assert [p.title for p in run[0]] == ["Cluster 5 (40 images)", "Cluster 2 (30 images)"]
    assert all("Dominant" not in p.caption and "10 members drawn at random" in p.caption for p in run[0])
    canvas = (3 * (SIZE + 1) + 1, 4 * (SIZE + 1) + 1)  # 10 sampled members: 4 columns, 3 rows
    for first, second in zip(*run, strict=True):
        png = read_png(tmp_path / "one" / first.path)
        assert png.shape[:2] == (canvas[0] + 20, canvas[1] + 20)  # the tight box adds 10 px each side
        assert np.array_equal(png, read_png(tmp_path / "two" / second.path))  # same seed, same picture
    assert len(set(source.loads)) <= 20  # 10 thumbnails per cluster, nothing else decoded
    with pytest.raises(ValueError, match="embed"):
        cluster_grids(labels, indices, lambda i: np.zeros((len(i) + 1, 3)), thumbs, tmp_path / "bad")
    with pytest.raises(ValueError, match="indices"):
        cluster_grids(labels, indices[:-1], pixels_embed, thumbs, tmp_path / "bad")


def test_overview_one_row_per_cluster_split_into_pictures(tmp_path: Path, patterns: Path) -> None:
    source = open_source(str(patterns))
    labels, indices, truth = designed_rows(source)
    thumbs = ThumbnailCache(tmp_path / "thumbs", source, size=SIZE)
    pictures = all_clusters_overview(
        labels, indices, thumbs, tmp_path / "report", per_row=5, clusters_per_picture=4, true_labels=truth
    )
    assert [p.path for p in pictures] == ["clusters/overview_01.png", "clusters/overview_02.png"]
    assert [p.title for p in pictures] == ["All clusters, 1-4 of 6", "All clusters, 5-6 of 6"]
    order = [5, 2, 3, 7, 0, 9]
    for number, picture in enumerate(pictures):
        png = read_png(tmp_path / "report" / picture.path)
        clusters = order[number * 4 : number * 4 + 4]
        canvas = (len(clusters) * (SIZE + 1) + 1, 5 * (SIZE + 1) + 1)
        assert png.shape[0] == canvas[0] + 20 and png.shape[1] > canvas[1] + 20  # labels at the left
        for row, cluster in enumerate(clusters):
            member_tiles = [expected_thumbnail(source, m) for m in indices[labels == cluster]]
            for column in range(5):
                tile = tile_at(png, canvas, row, column)
                assert any(np.array_equal(tile, member) for member in member_tiles)
    single = all_clusters_overview(labels, indices, thumbs, tmp_path / "single", folder="all")
    assert [(p.title, p.path) for p in single] == [("All 6 clusters", "all/overview_01.png")]
    assert (tmp_path / "single" / "all" / "overview_01.png").is_file()
