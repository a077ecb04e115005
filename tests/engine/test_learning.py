"""Training must learn: on small images whose classes survive the augmentations (stripe orientations and a
checkerboard, in random colours), DeepCluster-v2's trained network separates the classes by k-NN far better
than the same network at the start of its training. Fails when a change stops the pipeline learning.

Measured on an AMX Xeon, 1 thread (k-NN of the 384 images, k = 20): 0.393 at the start; trained 0.698 (bf16),
0.677 (fp32), 0.680 (seed 1); with the learning rate at 1e-6 (training stopped, only batch-norm statistics
move) 0.401. With LARS and the first layer from the data (DeepCluster-v2's defaults since 2026-12-06): 0.854
(Zen 4, bf16, seed 0). At this size the projection head makes it forget (0.393 -> 0.26-0.30 with the preset's head at 6
epochs): labels come from the backbone's embedding (`deepcluster_v2.out_dim=0`), from grayscale images, and most
training views are grayscale, so that the colour pairs, which say nothing of the class, do not make the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster import preset_config
from deepcluster.api import train
from deepcluster.cluster.knn import weighted_knn_accuracy
from deepcluster.config import apply_overrides
from deepcluster.data.views import ClusterView
from deepcluster.models import build_backbone
from deepcluster.seeding import seed_everything

SIZE = 16
MARGIN = 0.15
"""k-NN points the trained network must gain over its start (measured +0.28 to +0.31; a stopped one +0.01)."""


def textures(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images [n, SIZE, SIZE, 3] of four classes that crops and flips keep: horizontal stripes, vertical
    stripes, a checkerboard, diagonal stripes (either way); each in two random colours (which the class does not
    depend on, so colour misleads a network that has not learned), of a random period and phase, with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    labels = np.arange(n) % 4
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, kind in enumerate(labels):
        period, phase = rng.integers(3, 6), rng.integers(0, 6)
        if kind == 2:
            pattern = ((x + phase) // period + (y + phase) // period) % 2
        else:
            coordinate = [y, x, None, x + y if rng.integers(2) else x - y][kind]
            pattern = ((coordinate + phase) // period) % 2
        foreground, background = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        picture = np.where(pattern[..., None] == 1, foreground, background) + rng.normal(
            0, 10, (SIZE, SIZE, 3)
        )
        images[i] = np.clip(picture, 0, 255).astype(np.uint8)
    return images, labels


def _knn(network: torch.nn.Module, images: torch.Tensor, labels: np.ndarray) -> float:
    network.eval()
    with torch.no_grad():
        features = network(images).float().numpy()
    return weighted_knn_accuracy(features, labels, k=20, temperature=0.07)


@pytest.mark.usefixtures("one_thread")
def test_the_default_method_learns_what_survives_its_augmentations(tmp_path: Path) -> None:
    images, labels = textures(384)
    np.savez(tmp_path / "textures.npz", images=images, labels=labels)
    overrides = {
        "data": {"data": str(tmp_path / "textures.npz")},
        "model": {"arch": "alexnet_small_gap_half"},
        "cluster": {"k": 16, "label_view": "grayscale"},
        "augment": {"grayscale_prob": 0.8},
        "optim": {"batch_size": 64},
        "deepcluster_v2": {"out_dim": 0, "n_sets": 2, "n_small": 2},
        "run": {
            "epochs": 12,
            "knn_monitor": 0,
            "out": str(tmp_path / "run"),
            "progress": False,
            "report": False,
            "seed": 0,
        },
    }
    config = apply_overrides(preset_config("default"), overrides)
    result = train(config)
    resolved = result.config
    view = ClusterView(SIZE, resolved.data.mean, resolved.data.std)
    pixels = view(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    seed_everything(resolved.run.seed)  # the run's own first weights
    start = build_backbone(resolved.model.arch, sobel=resolved.model.sobel, input_size=SIZE)
    before, after = _knn(start, pixels, labels), _knn(result.backbone, pixels, labels)
    assert after >= before + MARGIN, f"k-NN {before:.3f} at the start of training, {after:.3f} trained"
