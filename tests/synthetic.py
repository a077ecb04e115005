"""Small synthetic image data and run configurations shared by the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepcluster import preset_config
from deepcluster.config import TrainConfig, apply_overrides
from deepcluster.storage import load_checkpoint

SIZE = 16


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """A width x height RGB image of uniform noise, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def write_pattern_npz(path: Path, n: int = 160) -> Path:
    """An .npz of `n` pattern images with their labels (the ArraySource layout)."""
    images, labels = pattern_images(n)
    np.savez(path, images=images, labels=labels)
    return path


def pattern_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 16x16 RGB images of four kinds (horizontal, vertical, diagonal stripes, checkers) with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    labels = np.arange(n) % 4
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, kind in enumerate(labels):
        period, phase = rng.integers(3, 6), rng.integers(0, 6)
        coordinate = [y, x, x + y, (x // 4 + y // 4) * period][kind]
        base = ((coordinate + phase) // period) % 2 * 160 + 40
        colour = rng.uniform(0.6, 1.0, size=3)
        noise = rng.normal(0, 12, size=(SIZE, SIZE, 3))
        images[i] = np.clip(base[..., None] * colour + noise, 0, 255).astype(np.uint8)
    return images, labels


def small_config(
    data_path: Path | str, out: Path, method: str = "deepcluster", **sections: dict
) -> TrainConfig:
    """A run of `method` (DeepCluster by default) that takes seconds: 16 px, k=8, batch 32, 2 epochs,
    checkpoint every 2 steps, no k-NN monitor, on the small AlexNet's conv layers with global pooling
    (`alexnet_small_gap`, whose checkpoints are 30 MB where the 4096-wide FC layers of `alexnet_small` make
    200 MB: those took half of a run's time and, kept, filled CI's disk). Tests of the FC network pass
    `model={"arch": "alexnet_small"}`."""
    overrides = {
        "data": {"data": str(data_path)},
        "model": {"arch": "alexnet_small_gap"},
        "cluster": {"k": 8, "pca_dim": 16},
        "optim": {"batch_size": 32},
        "run": {
            "epochs": 2,
            "out": str(out),
            "progress": False,
            "checkpoint_every": 2,
            "seed": 3,
            "report": False,
            "knn_monitor": 0,  # an extra pass each epoch; the tests of the monitor turn it on
        },
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return apply_overrides(preset_config("default", method=method), overrides)


def assert_same_run(a: Path, b: Path) -> None:
    """Two finished two-epoch runs have the same weights, per-epoch labels, losses and labels.csv."""
    state_a, state_b = (
        load_checkpoint(a / "checkpoints" / "last.pt")["model"],
        load_checkpoint(b / "checkpoints" / "last.pt")["model"],
    )
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    for epoch in range(2):
        name = f"labels/epoch_{epoch:03d}.npy"
        assert np.array_equal(np.load(a / name), np.load(b / name))
    records_a = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    records_b = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records_a] == [r["loss"] for r in records_b]
    assert [r["kmeans_loss"] for r in records_a] == [r["kmeans_loss"] for r in records_b]
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`deepcluster train ARGS` under `torchrun --standalone --nproc_per_node=2` (gloo, one torch thread per
    process), which must succeed; a failure shows the processes' error lines."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "deepcluster", "train", *args,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    marks = ("Error", "error:", "terminate", "Traceback", "Signal")
    why = "\n".join([line for line in done.stderr.splitlines() if any(m in line for m in marks)][:30])
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-2000:]}\n{why}\n{done.stderr[-2000:]}"
    return done
