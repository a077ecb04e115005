"""Streamed images (data.cache=stream): the same pixels as the decoded cache, the same seeded run and exact
resume in the middle of a streamed epoch, auto streams what does not fit, no cache file, and data that changes
under a run is named."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepcluster.api import resume, train
from deepcluster.data.decode import decode_images
from deepcluster.data.sources import DataError, open_source
from deepcluster.data.sources.shards import write_shards
from deepcluster.data.stream import PREFETCH, StreamedImages, batches, stream_images
from deepcluster.engine.loop import Trainer
from deepcluster.storage import load_checkpoint
from synthetic import assert_same_run, noise_image, small_config, torchrun


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 small photos-like images of varied sizes in 4 classes, one corrupt file among them."""
    root = tmp_path_factory.mktemp("stream") / "images"
    for i in range(160):
        (root / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        image = noise_image(18 + i % 7, 16 + i % 5, seed=i)
        image = Image.blend(image, Image.new("RGB", image.size, ((60 * (i % 4)) % 256, 90, 200)), 0.6)
        image.save(root / f"c{i % 4}" / f"{i:03d}.{'jpg' if i % 3 else 'png'}")
    (root / "c2" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def test_streamed_images_are_the_decoded_cache(folder: Path) -> None:
    source = open_source(folder)
    cached = decode_images(source, 16, num_threads=2, progress=False, inner_size=14)
    streamed = stream_images(source, 16, num_threads=2, progress=False, inner_size=14)
    assert isinstance(streamed.images, StreamedImages) and streamed.images.shape == tuple(cached.images.shape)
    assert np.array_equal(streamed.indices, cached.indices) and streamed.skipped == cached.skipped
    assert len(streamed.skipped) == 1 and "broken.jpg" in streamed.skipped[0][0]
    rows = torch.as_tensor(np.random.default_rng(0).choice(160, 50))
    assert torch.equal(streamed.images[rows].to("cpu"), cached.images[rows])
    assert torch.equal(streamed.images[10:40][5:9].to("cpu"), cached.images[15:19])
    selections = [rows[i : i + 7] for i in range(0, 50, 7)] + [slice(150, 160)]
    got = list(batches(streamed.images, selections))
    assert len(got) == len(selections) > PREFETCH
    for tensor, selection in zip(got, selections, strict=True):
        assert torch.equal(tensor, cached.images[selection])


def test_a_file_that_changes_under_a_streamed_run_is_named(folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "images"
    copy.mkdir()
    for i in range(20):
        noise_image(20, 20, seed=i).save(copy / f"{i:02d}.png")
    streamed = stream_images(open_source(copy), 16, num_threads=2, progress=False)
    (copy / "07.png").write_bytes(b"gone bad")
    with pytest.raises(DataError, match=r"07\.png could be decoded when the run started and cannot now"):
        list(batches(streamed.images, [slice(0, 4), slice(4, 8), slice(8, 12)]))


@pytest.fixture(scope="module")
def memory_run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("memory") / "run"
    train(small_config(folder, out, data={"cache": "memory"}, run={"epochs": 2, "checkpoint_every": 1}))
    return out


def test_a_streamed_v2_run_equals_the_cached_run(folder: Path, tmp_path: Path) -> None:
    runs = []
    for cache in ("memory", "stream"):
        out = tmp_path / cache
        v2 = {"n_sets": 2, "n_small": 2, "hidden": 32}  # multi-crop views, decoded per batch, at a small size
        train(
            small_config(
                folder, out, "deepcluster-v2", data={"cache": cache}, run={"epochs": 2}, deepcluster_v2=v2
            )
        )
        runs.append(out)
    assert_same_run(*runs, settings_may_differ=("data.cache",))


def test_resume_in_the_middle_of_a_streamed_epoch(folder: Path, memory_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"

    class Interrupt(Exception):
        pass

    def kill(trainer: Trainer) -> None:
        if (trainer.state.epoch, trainer.state.step) == (1, 2):
            raise Interrupt

    config = small_config(folder, out, data={"cache": "stream"}, run={"epochs": 2, "checkpoint_every": 1})
    with pytest.raises(Interrupt):
        Trainer(config, on_step=kill).fit()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["loop"]["step"] == 2
    resume(out)
    assert_same_run(memory_run, out, settings_may_differ=("data.cache",))


def test_auto_streams_what_does_not_fit_and_gives_the_cached_run(
    folder: Path, memory_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    config = small_config(
        folder, out, data={"memory_limit_gb": 1e-5}, run={"epochs": 2, "checkpoint_every": 1}
    )  # 159 images of 3 x 16 x 16 bytes: 0.12 MB, over the limit of 0.01 MB
    with caplog.at_level(logging.INFO, logger="deepcluster"):
        train(config)
    assert "exceed data.memory_limit_gb=1e-05: streamed" in caplog.text
    assert_same_run(memory_run, out, settings_may_differ=("data.cache", "data.memory_limit_gb"))
    assert not list(out.rglob("decoded*"))  # no cache file


def test_two_processes_stream_tar_shards_as_they_train_from_the_cache(folder: Path, tmp_path: Path) -> None:
    """Under torchrun each process decodes only its part of every batch and of the feature pass: the streamed
    run on shards ends where the cached one ends (features, labels, weights)."""
    pattern = tmp_path / "shards" / "part-%02d.tar"
    write_shards(open_source(folder), str(pattern), per_shard=50)  # 161 files: 4 shards, the last one short
    runs = []
    for cache in ("memory", "stream"):
        out = tmp_path / cache
        torchrun([
            "--data", str(tmp_path / "shards" / "part-{00..03}.tar"), "--out", str(out), "--arch", "alexnet_small_gap",
            "--k", "8", "--batch-size", "32", "--epoch-size", "64", "--epochs", "2", "--seed", "3",
            "--no-progress", "--save-features", "--set", "cluster.pca_dim=16", "--set", "run.report=false",
            "--set", "run.knn_monitor=0", "--set", f"data.cache={cache}", "--set", "data.input_size=16",
        ], tmp_path)  # fmt: skip
        runs.append(out)
    skipped = (runs[1] / "skipped.txt").read_text()  # the broken file, by its name, as in a folder
    assert skipped.startswith("c2/broken.jpg\tUnidentifiedImageError: not an image (a member of 13 bytes)")
    assert_same_run(*runs, settings_may_differ=("data.cache",))
    assert np.array_equal(np.load(runs[0] / "features.npy"), np.load(runs[1] / "features.npy"))
