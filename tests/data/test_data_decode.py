"""Tests for deepcluster.data.decode: the decoded-image cache on tiny images written by the tests."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from deepcluster.api import train
from deepcluster.data.decode import MAX_LISTED_FAILURES, DecodedImages, decode_images, square_image
from deepcluster.data.sources import ArraySource, DataError, FolderSource
from synthetic import noise_image, small_config


def reference(image: Image.Image, size: int) -> torch.Tensor:
    pipeline = transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
    )
    return pipeline(image)


def coloured_stack(n: int, height: int = 12, width: int = 12) -> np.ndarray:
    """n solid images whose colour encodes their index, so order can be checked on the output."""
    images = np.zeros((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = (i, 255 - i, (7 * i) % 256)
    return images


def test_output_shape_dtype_and_identity_for_square_images() -> None:
    stack = np.stack([np.asarray(noise_image(16, 16, seed)) for seed in range(5)])
    decoded = decode_images(ArraySource(stack), 16, num_threads=1, progress=False)
    assert isinstance(decoded, DecodedImages)
    assert decoded.images.shape == (5, 3, 16, 16) and decoded.images.dtype == torch.uint8
    assert decoded.images.is_contiguous()
    assert decoded.indices.dtype == np.int64 and decoded.indices.tolist() == [0, 1, 2, 3, 4]
    assert decoded.skipped == [] and decoded.size == 16 and len(decoded) == 5
    # already size x size: the pixels are kept exactly
    assert torch.equal(decoded.images, torch.from_numpy(stack).permute(0, 3, 1, 2))


@pytest.mark.parametrize(("width", "height"), [(64, 48), (48, 64), (20, 10), (33, 32)])
def test_resize_and_crop_matches_torchvision_pipeline(tmp_path: Path, width: int, height: int) -> None:
    image = noise_image(width, height, seed=width * height)
    image.save(tmp_path / "img.png")
    decoded = decode_images(FolderSource(tmp_path), 32, num_threads=1, progress=False)
    assert decoded.images.shape == (1, 3, 32, 32)
    assert torch.equal(decoded.images[0], reference(image, 32))
    assert torch.equal(transforms.PILToTensor()(square_image(image, 32)), reference(image, 32))


def test_threads_give_identical_results_in_index_order() -> None:
    stack = coloured_stack(150, height=20, width=14)
    source = ArraySource(stack)
    one = decode_images(source, 8, num_threads=1, progress=False)
    two = decode_images(source, 8, num_threads=2, progress=True)
    assert torch.equal(one.images, two.images)
    assert one.indices.tolist() == two.indices.tolist() == list(range(150))
    centre = two.images[:, :, 4, 4].numpy()
    assert centre.tolist() == [[i, 255 - i, (7 * i) % 256] for i in range(150)]


def write_broken_folder(root: Path) -> tuple[list[str], list[str]]:
    """Good images (solid colours) mixed with a corrupt, a truncated and an empty file; returns the names."""
    good = []
    for i in range(6):
        name = f"img{i}.png"
        Image.new("RGB", (10, 14), (40 * i, 3 * i, 200)).save(root / name)
        good.append(name)
    buffer = io.BytesIO()
    noise_image(64, 64, seed=1).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    (root / "a_truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "img2_random.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (root / "zz_empty.png").write_bytes(b"")
    return good, ["a_truncated.jpg", "img2_random.jpg", "zz_empty.png"]


def test_broken_files_are_skipped_reported_and_the_rest_decode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = write_broken_folder(tmp_path)
    source = FolderSource(tmp_path)
    names = [source.name(i) for i in range(len(source))]
    with caplog.at_level(logging.WARNING):
        decoded = decode_images(source, 8, num_threads=2, progress=False)
    assert sorted(name for name, _ in decoded.skipped) == sorted(bad)
    assert all(reason for _, reason in decoded.skipped)
    assert [names[i] for i in decoded.indices] == sorted(good)
    assert decoded.images.shape == (6, 3, 8, 8) and decoded.images.is_contiguous()
    for row, name in enumerate(sorted(good)):
        i = int(name[3])
        assert decoded.images[row, :, 3, 3].tolist() == [40 * i, 3 * i, 200]
    text = caplog.text
    assert all(name in text for name in bad)
    assert "skipped 3 of 9 images" in text


def test_failures_first_middle_and_last_keep_rows_aligned(tmp_path: Path) -> None:
    broken = {0, 3, 4, 9}
    for i in range(10):
        path = tmp_path / f"{i:02d}.png"
        if i in broken:
            path.write_bytes(b"not an image")
        else:
            Image.new("RGB", (5, 5), (i, 2 * i, 3 * i)).save(path)
    decoded = decode_images(FolderSource(tmp_path), 5, num_threads=1, progress=False)
    kept = [i for i in range(10) if i not in broken]
    assert decoded.indices.tolist() == kept
    assert decoded.images[:, :, 0, 0].tolist() == [[i, 2 * i, 3 * i] for i in kept]
    assert [name for name, _ in decoded.skipped] == [f"{i:02d}.png" for i in sorted(broken)]


def test_warnings_are_capped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "good.png")
    for i in range(MAX_LISTED_FAILURES + 5):
        (tmp_path / f"bad{i:02d}.jpg").write_bytes(b"")
    logger = logging.getLogger("test_decode_cap")
    with caplog.at_level(logging.WARNING, logger="test_decode_cap"):
        decoded = decode_images(FolderSource(tmp_path), 4, num_threads=2, progress=False, log=logger)
    assert len(decoded.skipped) == MAX_LISTED_FAILURES + 5 and len(decoded) == 1
    records = [r for r in caplog.records if r.name == "test_decode_cap"]
    assert len(records) == MAX_LISTED_FAILURES + 1
    assert "skipped 25 of 26 images" in records[-1].getMessage()
    assert "5 more not listed" in records[-1].getMessage()


def test_every_image_failing_raises(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"junk")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"folder .* none of the 2 images could be decoded.*a\.jpg"):
        decode_images(FolderSource(tmp_path), 8, num_threads=1, progress=False)


def test_bad_arguments() -> None:
    source = ArraySource(coloured_stack(2))
    with pytest.raises(DataError, match="image size 0"):
        decode_images(source, 0, progress=False)
    with pytest.raises(DataError, match="num_threads 0"):
        decode_images(source, 8, num_threads=0, progress=False)


def test_a_memory_mapped_cache_holds_the_same_images_as_ram(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    write_broken_folder(folder)
    source = FolderSource(folder)
    in_ram = decode_images(source, 8, num_threads=2, progress=False)
    cache = tmp_path / "cache" / "decoded.npy"
    mapped = decode_images(source, 8, num_threads=2, progress=False, cache_file=cache)
    assert cache.is_file() and np.load(cache, mmap_mode="r").shape == (9, 3, 8, 8)
    assert torch.equal(mapped.images, in_ram.images)
    assert mapped.indices.tolist() == in_ram.indices.tolist()
    on_disk = np.load(cache, mmap_mode="r")  # the kept images, compacted to the front of the file
    assert np.array_equal(on_disk[: len(in_ram)], in_ram.images.numpy())


# ---------------------------------------------------------------- decompression bombs
def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 1-bit pixels (its data is a few bytes: it never decodes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_reported_by_path_and_skipped(
    noise_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PIL's limit (Image.MAX_IMAGE_PIXELS, 89.5 million pixels): above twice the limit PIL refuses the file;
    between the limit and twice it, PIL only warns, and the image (a 9,500 x 9,500 PNG of 11 kB that decodes to
    270 MB of RGB) must be refused by us."""
    folder = noise_folder
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None and limit < 9500 * 9500 and 2 * limit < 20000 * 20000
    Image.new("1", (9500, 9500)).save(folder / "bomb_warned.png")  # a real, complete image
    (folder / "bomb_refused.png").write_bytes(png_declaring(20000, 20000))
    out = tmp_path / "run"
    config = small_config(
        folder, out, data={"input_size": 16}, cluster={"k": 4, "pca_dim": 8}, run={"epochs": 1}
    )
    with caplog.at_level(logging.WARNING, logger="deepcluster"):
        train(config)
    for name in ("bomb_refused.png", "bomb_warned.png"):
        assert f"skipping image {name}: DecompressionBombError: " in caplog.text
    skipped = dict(line.split("\t", 1) for line in (out / "skipped.txt").read_text().splitlines())
    assert sorted(skipped) == ["bomb_refused.png", "bomb_warned.png"]
    assert (
        skipped["bomb_warned.png"].startswith("DecompressionBombError: ")
        and "90250000 pixels" in skipped["bomb_warned.png"]
    )
    assert (
        skipped["bomb_refused.png"].startswith("DecompressionBombError: ")
        and "400000000 pixels" in skipped["bomb_refused.png"]
    )
    rows = (out / "labels.csv").read_text().splitlines()[1:]
    assert len(rows) == 40 and not any("bomb" in row for row in rows)


@pytest.fixture
def noise_folder(tmp_path: Path) -> Path:
    """40 small noise images in a folder."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        noise_image(16, 16, seed=i).save(folder / f"img{i:02d}.png")
    return folder
