"""WebDataset tar shards as data: `deepcluster shards` writes them from a folder, the shard source gives back the
same images, names and classes, a run trains on them, a member that does not decode is reported by its key and
skipped, and bad shard patterns are named."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from deepcluster.api import train
from deepcluster.cli import main
from deepcluster.data.sources import DataError, ShardSource, open_source, write_shards
from deepcluster.storage import RunDir
from synthetic import noise_image, small_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shard-images") / "images"
    for c, kind in enumerate(("cat", "dog", "owl")):
        (root / kind).mkdir(parents=True)
        for i in range(23):
            image = noise_image(24 + i % 5, 20 + c, seed=100 * c + i)
            image.save(root / kind / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    return root


def test_folder_to_shards_round_trip(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pattern = tmp_path / "shards" / "train-%06d.tar"
    assert main(["shards", str(folder), str(pattern), "--per-shard", "20", "--no-progress"]) == 0
    assert "69 images written into 4 shard(s)" in capsys.readouterr().out
    original = open_source(folder)
    shards = open_source(str(tmp_path / "shards" / "train-{000000..000003}.tar"))
    assert isinstance(shards, ShardSource) and len(shards) == len(original) == 69
    assert [shards.name(i) for i in range(69)] == [original.name(i) for i in range(69)]
    assert np.array_equal(shards.labels, original.labels)
    assert shards.classes == original.classes == ["cat", "dog", "owl"]
    for i in range(69):
        assert shards.raw_bytes(i) == Path(original.path(i)).read_bytes()  # the original file, byte for byte
        assert np.array_equal(np.asarray(shards.load(i)), np.asarray(original.load(i)))
    globbed = open_source(str(tmp_path / "shards" / "train-*.tar"))
    assert [globbed.name(i) for i in range(69)] == [original.name(i) for i in range(69)]


def test_an_interrupted_writer_leaves_whole_shards_only(folder: Path, tmp_path: Path) -> None:
    def stop_at_image_45(index: int) -> None:
        if index == 45:
            raise KeyboardInterrupt  # what a Ctrl-C in the middle of the third shard raises

    with pytest.raises(KeyboardInterrupt):
        write_shards(open_source(folder), str(tmp_path / "out" / "train-%06d.tar"), 20, stop_at_image_45)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train-000000.tar", "train-000001.tar"]
    whole = open_source(str(tmp_path / "out" / "train-{000000..000001}.tar"))
    assert len(whole) == 40 and whole.name(39) == open_source(folder).name(39)


def _shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    noise_image(16, 16, seed).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_run_trains_on_shards_and_skips_a_member_that_does_not_decode(tmp_path: Path) -> None:
    for shard in range(2):
        members = []
        for i in range(50):
            key = f"s{shard}/{i:04d}"
            members += [(f"{key}.png", _png(1000 * shard + i)), (f"{key}.cls", str(i % 4).encode())]
        if shard == 1:
            members.append(("s1/broken.jpg", b"\xff\xd8 this is not a JPEG"))
            members.append(("s1/notes.json", b"{}"))  # a sample without an image is no image
        _shard(tmp_path / f"part-{shard}.tar", members)
    source = open_source(str(tmp_path / "part-{0..1}.tar"))
    assert len(source) == 101 and source.labels is None  # the broken sample has no class: no labels
    out = tmp_path / "run"
    train(small_config(str(tmp_path / "part-{0..1}.tar"), out, run={"epochs": 1}))
    skipped = RunDir(out).skipped.read_text()
    assert "part-1.tar:s1/broken" in skipped
    names = RunDir(out).read_labels().names
    assert len(names) == 100 and names[0] == "part-0.tar:s0/0000" and names[-1] == "part-1.tar:s1/0049"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{dir}/missing-{{0..2}}.tar", "missing-0.tar does not exist (3 of 3 missing)"),
        ("{dir}/nothing-*.tar", "no shard matches"),
        ("{dir}/fake.tar", "is not a readable tar shard"),
    ],
)
def test_bad_shard_specs_are_named(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "fake.tar").write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_source(spec.format(dir=tmp_path))
