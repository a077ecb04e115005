"""Image-bytes archives read image by image from the file (np.savez) or held in memory (compressed)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from deepcluster.data.decode import decode_images
from deepcluster.data.sources import DataError, JpegBytesSource
from deepcluster.data.sources.pread import stored_npy_range
from test_data_sources import write_archive


def array_bytes(source: JpegBytesSource) -> int:
    """Bytes of the NumPy arrays the source holds (its index, and the images when resident)."""
    return sum(v.nbytes for v in vars(source).values() if isinstance(v, np.ndarray))


@pytest.fixture()
def archives(tmp_path: Path) -> tuple[Path, Path]:
    stored = tmp_path / "stored.npz"
    write_archive(stored)
    compressed = tmp_path / "compressed.npz"
    with np.load(stored) as data:
        np.savez_compressed(compressed, **{key: data[key] for key in data.files})
    return stored, compressed


def test_a_stored_archive_is_read_from_the_file_and_gives_the_same_bytes(archives: tuple[Path, Path]) -> None:
    stored, compressed = archives
    for split in ("train", "val"):
        from_file = JpegBytesSource(stored, split)
        in_memory = JpegBytesSource(compressed, split)
        assert not from_file.resident and in_memory.resident
        with np.load(stored) as data:
            images = int(data[f"jpeg_{split}"].nbytes)
        assert array_bytes(from_file) < images <= array_bytes(in_memory)  # the index only, not the images
        assert JpegBytesSource(stored, split, resident=True).resident
        for i in range(len(from_file)):
            assert from_file.raw_bytes(i) == in_memory.raw_bytes(i)
        copy = pickle.loads(pickle.dumps(from_file))  # as a torchrun or worker process gets it
        assert copy.raw_bytes(len(copy) - 1) == in_memory.raw_bytes(len(copy) - 1)
        a = decode_images(from_file, 16, num_threads=2)
        b = decode_images(in_memory, 16, num_threads=2)
        assert np.array_equal(a.indices, b.indices) and bool((a.images == b.images).all())


def test_the_member_range_is_where_numpy_wrote_the_array(archives: tuple[Path, Path]) -> None:
    stored, compressed = archives
    found = stored_npy_range(stored, "jpeg_val.npy")
    assert found is not None
    start, length, dtype, shape = found
    with np.load(stored) as data:
        want = data["jpeg_val"]
    assert (dtype, shape, length) == (want.dtype, want.shape, want.nbytes)
    with open(stored, "rb") as handle:
        handle.seek(start)
        assert handle.read(length) == want.tobytes()
    assert stored_npy_range(compressed, "jpeg_val.npy") is None  # deflated: np.load reads it
    assert stored_npy_range(stored, "no_such.npy") is None
    assert stored_npy_range(stored.parent / "missing.npz", "jpeg_val.npy") is None


def test_an_archive_truncated_under_a_run_names_the_file(archives: tuple[Path, Path]) -> None:
    stored, _ = archives
    source = JpegBytesSource(stored, "val")
    assert source.raw_bytes(0)  # opened and read once
    found = stored_npy_range(stored, "jpeg_val.npy")
    assert found is not None
    os.truncate(stored, found[0] + 10)  # inside the first image of the split
    with pytest.raises(OSError, match=r"stored\.npz: truncated at image c1/val_001\.jpg"):
        source.raw_bytes(1)
    with pytest.raises(DataError, match=r"--data .*stored\.npz: cannot read as a NumPy \.npz archive"):
        JpegBytesSource(stored, "val")  # and opening it again is refused before any work
