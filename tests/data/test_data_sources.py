"""Tests for deepcluster.data.sources: every source kind on tiny images written by the tests themselves."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcluster.data.sources import (
    ArraySource,
    DataError,
    FileListSource,
    FolderSource,
    JpegBytesSource,
    TorchvisionSource,
    embedded_source,
    open_source,
    to_rgb,
)


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> Image.Image:
    return Image.new("RGB", size, colour)


def save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def jpeg_bytes(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def gradient(seed: int, size: int = 16) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 8 + seed * 10, y * 8 + seed * 5, (x + y) * 4 + seed * 3], axis=-1).astype(np.uint8)


# ---------------------------------------------------------------- FolderSource


def test_folder_with_class_subfolders_is_recursive_sorted_and_labelled(tmp_path: Path) -> None:
    save(solid((255, 0, 0)), tmp_path / "dog" / "b.png")
    save(solid((0, 255, 0)), tmp_path / "cat" / "z.JPG")  # upper-case extension
    save(solid((0, 0, 255)), tmp_path / "cat" / "nested" / "deeper" / "a.bmp")
    save(solid((9, 9, 9)), tmp_path / "cat" / ".hidden.png")  # hidden file
    save(solid((9, 9, 9)), tmp_path / ".cache" / "x.png")  # hidden folder
    (tmp_path / "dog" / "notes.txt").write_text("not an image")

    source = FolderSource(tmp_path)

    assert len(source) == 3
    assert [source.name(i) for i in range(3)] == ["cat/nested/deeper/a.bmp", "cat/z.JPG", "dog/b.png"]
    assert source.classes == ["cat", "dog"]
    assert source.labels is not None and source.labels.dtype == np.int64
    assert source.labels.tolist() == [0, 0, 1]
    assert np.asarray(source.load(0))[0, 0].tolist() == [0, 0, 255]
    assert np.asarray(source.load(2))[0, 0].tolist() == [255, 0, 0]
    assert "3 images" in source.description and "2 classes" in source.description


def test_flat_and_mixed_folders_have_no_labels(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    save(solid((1, 2, 3)), flat / "a.png")
    save(solid((4, 5, 6)), flat / "b.png")
    source = FolderSource(flat)
    assert len(source) == 2 and source.labels is None and source.classes is None
    assert [source.name(i) for i in range(2)] == ["a.png", "b.png"]

    mixed = tmp_path / "mixed"
    save(solid((1, 2, 3)), mixed / "top.png")
    save(solid((4, 5, 6)), mixed / "cls" / "inner.png")
    source = FolderSource(mixed)
    assert len(source) == 2 and source.labels is None and source.classes is None


def test_mixed_image_modes_load_as_rgb_with_expected_pixels(tmp_path: Path) -> None:
    save(Image.new("L", (5, 4), 100), tmp_path / "gray.png")
    save(Image.new("RGB", (5, 4), (200, 30, 40)).quantize(colors=2), tmp_path / "palette.gif")
    save(Image.new("RGB", (5, 4), (200, 30, 40)).quantize(colors=2), tmp_path / "clear.gif", transparency=0)
    save(Image.new("RGBA", (5, 4), (10, 20, 30, 255)), tmp_path / "opaque.png")
    save(Image.new("RGBA", (5, 4), (0, 0, 0, 0)), tmp_path / "transparent.png")
    save(Image.new("RGBA", (5, 4), (0, 0, 0, 128)), tmp_path / "half.webp", lossless=True)
    save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "cmyk.jpg", quality=95)
    save(Image.fromarray(np.full((4, 5), 65535, np.uint16)), tmp_path / "gray16.png")
    source = FolderSource(tmp_path)
    expected = {
        "clear.gif": (255, 255, 255),  # palette with a transparent colour: composited on white
        "cmyk.jpg": (0, 255, 255),
        "gray.png": (100, 100, 100),
        "gray16.png": (255, 255, 255),
        "half.webp": (127, 127, 127),
        "opaque.png": (10, 20, 30),
        "palette.gif": (200, 30, 40),
        "transparent.png": (255, 255, 255),  # alpha is composited on white
    }
    assert sorted(source.name(i) for i in range(len(source))) == sorted(expected)
    for index in range(len(source)):
        image = source.load(index)
        assert image.mode == "RGB"
        pixels = np.asarray(image).astype(int)
        want = np.array(expected[source.name(index)])
        tolerance = 3 if source.name(index).endswith(".jpg") else 1
        assert np.abs(pixels - want).max() <= tolerance, source.name(index)


def test_folder_load_does_not_leak_file_handles(tmp_path: Path) -> None:
    save(solid((1, 2, 3)), tmp_path / "a.png")
    save(solid((1, 2, 3)), tmp_path / "b.jpg")
    source = FolderSource(tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        source.load(0)
        source.load(1)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_folder_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere: folder does not exist"):
        FolderSource(missing)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no images found.*empty.*\.jpg, \.jpeg, \.png"):
        FolderSource(empty)


def test_index_out_of_range(tmp_path: Path) -> None:
    save(solid((1, 2, 3)), tmp_path / "a.png")
    with pytest.raises(IndexError):
        FolderSource(tmp_path).load(1)


# ---------------------------------------------------------------- ArraySource


def test_array_source_from_npz_nhwc_and_nhw(tmp_path: Path) -> None:
    rgb = np.stack([gradient(i) for i in range(4)])
    np.savez(tmp_path / "rgb.npz", images=rgb, labels=np.array([0, 1, 1, 0]), classes=np.array(["a", "b"]))
    source = ArraySource.from_npz(tmp_path / "rgb.npz")
    assert len(source) == 4
    assert np.array_equal(np.asarray(source.load(2)), rgb[2])
    assert source.labels is not None and source.labels.dtype == np.int64
    assert source.labels.tolist() == [0, 1, 1, 0]
    assert source.classes == ["a", "b"]
    assert source.name(3) == "3"

    gray = np.arange(3 * 5 * 7, dtype=np.uint8).reshape(3, 5, 7)
    np.savez(tmp_path / "gray.npz", x=gray, y=np.array([2, 1, 0], dtype=np.uint8))
    source = ArraySource.from_npz(tmp_path / "gray.npz")
    image = np.asarray(source.load(1))
    assert image.shape == (5, 7, 3)
    assert all(np.array_equal(image[..., c], gray[1]) for c in range(3))
    assert source.labels is not None and source.labels.tolist() == [2, 1, 0] and source.classes is None


def test_array_source_single_channel_and_rgba() -> None:
    one = np.full((2, 3, 3, 1), 77, dtype=np.uint8)
    assert np.asarray(ArraySource(one).load(0))[0, 0].tolist() == [77, 77, 77]
    rgba = np.zeros((1, 3, 3, 4), dtype=np.uint8)
    rgba[..., :3] = (50, 60, 70)
    rgba[0, 0, 0, 3] = 255  # one opaque pixel, the rest transparent -> white
    image = np.asarray(ArraySource(rgba).load(0))
    assert image[0, 0].tolist() == [50, 60, 70] and image[1, 1].tolist() == [255, 255, 255]


def test_array_source_errors_name_file_key_and_layout(tmp_path: Path) -> None:
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(DataError, match=r"float\.npz, key 'images'.*uint8 array N x H x W x C.*float32"):
        ArraySource.from_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "shape.npz", data=np.zeros((2, 4, 4, 2), dtype=np.uint8))
    with pytest.raises(DataError, match=r"shape\.npz, key 'data'.*got shape \(2, 4, 4, 2\)"):
        ArraySource.from_npz(tmp_path / "shape.npz")
    np.savez(tmp_path / "nokey.npz", pixels=np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"nokey\.npz.*'images'.*found keys \['pixels'\]"):
        ArraySource.from_npz(tmp_path / "nokey.npz")
    with pytest.raises(DataError, match="labels must be a 1-D array of 2"):
        ArraySource(np.zeros((2, 4, 4), dtype=np.uint8), labels=[0, 1, 2])


# ---------------------------------------------------------------- JpegBytesSource


def write_archive(path: Path) -> dict[str, list[np.ndarray]]:
    """Write a tiny archive in the documented jpeg-bytes format; return the pixels of each split."""
    contents: dict[str, list[np.ndarray]] = {}
    arrays: dict[str, np.ndarray] = {"classes": np.array(["red", "green", "blue"])}
    for split, count, seed in (("train", 5, 0), ("val", 3, 7)):
        pixels = [gradient(seed + i) for i in range(count)]
        blobs = [jpeg_bytes(Image.fromarray(p)) for p in pixels]
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        arrays[f"jpeg_{split}"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"off_{split}"] = offsets
        arrays[f"y_{split}"] = (np.arange(count) % 3).astype(np.uint8)
        arrays[f"files_{split}"] = np.array([f"c{i % 3}/{split}_{i:03d}.jpg" for i in range(count)])
        contents[split] = pixels
    np.savez(path, **arrays)
    return contents


def test_jpeg_bytes_source_round_trips_pixels_names_labels(tmp_path: Path) -> None:
    contents = write_archive(tmp_path / "arch.npz")
    source = JpegBytesSource(tmp_path / "arch.npz", "val")
    assert len(source) == 3 and source.split == "val"
    for i, want in enumerate(contents["val"]):
        got = np.asarray(source.load(i)).astype(int)
        assert got.shape == want.shape
        assert np.abs(got - want).mean() < 4
    assert source.name(1) == "c1/val_001.jpg"
    assert source.labels is not None and source.labels.dtype == np.int64
    assert source.labels.tolist() == [0, 1, 2]
    assert source.classes == ["red", "green", "blue"]
    assert JpegBytesSource(tmp_path / "arch.npz").split == "train"  # default split


def test_jpeg_bytes_source_bad_split_lists_splits(tmp_path: Path) -> None:
    write_archive(tmp_path / "arch.npz")
    with pytest.raises(DataError, match=r"--split test.*arch\.npz.*train, val"):
        JpegBytesSource(tmp_path / "arch.npz", "test")


def test_jpeg_bytes_source_reads_png_bytes_and_reports_corrupt_items(tmp_path: Path) -> None:
    blobs = [jpeg_bytes(solid((9, 99, 199)), "PNG"), b"garbage bytes"]
    offsets = np.array([0, len(blobs[0]), len(blobs[0]) + len(blobs[1])], dtype=np.int64)
    np.savez(tmp_path / "p.npz", jpeg_only=np.frombuffer(b"".join(blobs), np.uint8), off_only=offsets)
    source = JpegBytesSource(tmp_path / "p.npz")
    assert source.split == "only" and source.labels is None and source.name(1) == "1"
    assert np.asarray(source.load(0))[0, 0].tolist() == [9, 99, 199]
    with pytest.raises(OSError):
        source.load(1)


def test_embedded_source_is_cifar10_test() -> None:
    source = embedded_source()
    assert len(source) == 10_000
    assert source.classes is not None and len(source.classes) == 10 and source.classes[0] == "airplane"
    assert source.labels is not None and source.labels.dtype == np.int64
    assert np.bincount(source.labels).tolist() == [1000] * 10
    image = source.load(1234)
    assert image.mode == "RGB" and image.size == (32, 32)
    assert "10,000 images" in source.description


# ---------------------------------------------------------------- FileListSource


def test_file_list_source_resolves_relative_paths_and_labels(tmp_path: Path) -> None:
    save(solid((10, 20, 30)), tmp_path / "imgs" / "a.png")
    save(solid((40, 50, 60)), tmp_path / "imgs" / "b c.png")  # a space in the name
    other = save(solid((70, 80, 90)), tmp_path / "elsewhere" / "c.png")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "all.txt").write_text(f"# comment\n../imgs/a.png 2\n\n../imgs/b c.png 0\n{other} 1\n")
    source = FileListSource(lists / "all.txt")
    assert len(source) == 3
    assert source.labels is not None and source.labels.tolist() == [2, 0, 1]
    assert source.name(1) == "../imgs/b c.png"
    assert [np.asarray(source.load(i))[0, 0].tolist() for i in range(3)] == [
        [10, 20, 30],
        [40, 50, 60],
        [70, 80, 90],
    ]

    (lists / "nolabels.lst").write_text("../imgs/a.png\n../imgs/missing.png\n")
    source = FileListSource(lists / "nolabels.lst")  # files are read lazily: a missing file is no error yet
    assert len(source) == 2 and source.labels is None
    with pytest.raises(FileNotFoundError):
        source.load(1)


def test_file_list_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"none\.txt: list file does not exist"):
        FileListSource(tmp_path / "none.txt")
    (tmp_path / "mixed.txt").write_text("a.png 1\nb.png\n")
    with pytest.raises(DataError, match="line 2.*label on every line or on none"):
        FileListSource(tmp_path / "mixed.txt")
    (tmp_path / "blank.txt").write_text("\n# only a comment\n")
    with pytest.raises(DataError, match="names no images"):
        FileListSource(tmp_path / "blank.txt")


# ---------------------------------------------------------------- TorchvisionSource


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an array in the IDX format torchvision's MNIST reader expects (uint8, big-endian header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_source_reads_local_mnist_files(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    train_images = np.arange(4 * 28 * 28, dtype=np.int64).reshape(4, 28, 28) % 251
    write_idx(raw / "train-images-idx3-ubyte", train_images)
    write_idx(raw / "train-labels-idx1-ubyte", np.array([3, 1, 4, 1]))
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([5, 9]))

    source = open_source("Fashion_MNIST", root=str(tmp_path))
    assert isinstance(source, TorchvisionSource) and source.split == "train"
    assert len(source) == 4
    assert source.labels is not None and source.labels.dtype == np.int64
    assert source.labels.tolist() == [3, 1, 4, 1]
    assert source.classes is not None and len(source.classes) == 10
    image = np.asarray(source.load(2))
    assert image.shape == (28, 28, 3) and np.array_equal(image[..., 1], train_images[2])
    test = TorchvisionSource("fashionmnist", tmp_path, split="test")
    assert len(test) == 2 and test.labels is not None and test.labels.tolist() == [5, 9]


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "mnist", "fashion-mnist", "svhn"])
def test_torchvision_source_missing_files_asks_for_download(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match=rf"--data {name}:.*{tmp_path}.*--download.*--data-root"):
        TorchvisionSource(name, tmp_path, split="test", download=False)


def test_torchvision_source_bad_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--split extra: cifar10 has no such split; choose from train, test"):
        TorchvisionSource("cifar10", tmp_path, split="extra")


# ---------------------------------------------------------------- open_source


def test_open_source_resolves_each_kind(tmp_path: Path) -> None:
    for spec in (None, "", "embedded"):
        source = open_source(spec)
        assert isinstance(source, JpegBytesSource) and len(source) == 10_000

    folder = tmp_path / "folder"
    save(solid((1, 2, 3)), folder / "a.png")
    assert isinstance(open_source(folder), FolderSource)
    assert isinstance(open_source(str(folder)), FolderSource)

    write_archive(tmp_path / "arch.npz")
    archive = open_source(tmp_path / "arch.npz")
    assert isinstance(archive, JpegBytesSource) and archive.split == "train" and len(archive) == 5
    assert len(open_source(tmp_path / "arch.npz", split="val")) == 3

    np.savez(tmp_path / "arr.npz", images=np.zeros((3, 4, 4, 3), dtype=np.uint8))
    arrays = open_source(tmp_path / "arr.npz")
    assert isinstance(arrays, ArraySource) and len(arrays) == 3

    (tmp_path / "list.txt").write_text("folder/a.png\n")
    assert isinstance(open_source(tmp_path / "list.txt"), FileListSource)
    (tmp_path / "list.lst").write_text("folder/a.png\n")
    assert isinstance(open_source(tmp_path / "list.lst"), FileListSource)

    with pytest.raises(DataError, match="--download"):
        open_source("CIFAR10", root=str(tmp_path / "empty_root"))


def test_open_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"--data imagenet-xyz: no such file or folder.*choose from.*cifar10"):
        open_source("imagenet-xyz")
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
        open_source(tmp_path / "notes.csv")
    with pytest.raises(DataError, match="only has the split 'test'"):
        open_source("embedded", split="train")


def test_to_rgb_returns_a_copy_for_rgb_input() -> None:
    image = solid((5, 6, 7))
    converted = to_rgb(image)
    assert converted is not image and converted.mode == "RGB"
    assert np.array_equal(np.asarray(converted), np.asarray(image))
