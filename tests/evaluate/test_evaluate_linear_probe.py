import math

import numpy as np
import pytest
import torch

from deepcluster.data.views import ClusterView
from deepcluster.evaluate.linear_probe import (
    FC_TAP,
    ProbeConfig,
    center_view,
    linear_probe,
    probe_pool_size,
    probe_taps,
    tap_activations,
)
from deepcluster.models import build_backbone

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


pytestmark = pytest.mark.usefixtures("one_thread")


def _patterns(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """4 classes: horizontal stripes, vertical stripes, checkerboard, flat; random phase and noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = []
    for label in labels.tolist():
        phase = int(torch.randint(0, 4, (1,), generator=g))
        pattern = [
            ((yy + phase) // 2) % 2,
            ((xx + phase) // 2) % 2,
            ((yy + phase) // 2 + xx // 2) % 2,
            torch.zeros(size, size, dtype=torch.long),
        ][label]
        image = pattern.float() * 200 + 20 + torch.rand(size, size, generator=g) * 30
        images.append(image.expand(3, size, size))
    return torch.stack(images).round().clamp(0, 255).to(torch.uint8), labels.numpy()


def _backbone():
    torch.manual_seed(0)
    return build_backbone("alexnet_small", sobel=True, input_size=16)


def test_pool_size_targets_about_9000_dims():
    # AlexNet at 224 px: conv1 96x55x55 -> 10 (9600), conv2 256x27x27 -> 6 (9216), conv3 384x13x13 -> 5 (9600)
    assert probe_pool_size(96, 55) == 10
    assert probe_pool_size(256, 27) == 6
    assert probe_pool_size(384, 13) == 5
    # never above the spatial size: small inputs keep their whole map
    assert probe_pool_size(384, 4) == 4
    assert probe_pool_size(512, 1) == 1


def test_lr_schedules():
    step = ProbeConfig(epochs=9, lr=0.1, schedule="step")
    assert [step.lr_at(e) for e in (0, 2, 3, 6, 8)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.001])
    cosine = ProbeConfig(epochs=4, lr=0.1, schedule="cosine")
    assert [cosine.lr_at(e) for e in range(4)] == pytest.approx(
        [0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    )
    with pytest.raises(ValueError, match="schedule"):
        ProbeConfig(schedule="linear")


def test_center_view_full_crop_equals_cluster_view():
    images, _ = _patterns(3)
    ours = center_view(images, 16, 1.0, MEAN, STD)
    assert torch.allclose(ours, ClusterView(16, MEAN, STD)(images), atol=1e-5)


def test_one_pass_tap_activations_match_separate_forwards():
    backbone = _backbone().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        acts = tap_activations(backbone, x, ["conv2", FC_TAP, "conv5"])
        assert list(acts) == ["conv2", FC_TAP, "conv5"]
        assert torch.equal(acts[FC_TAP], torch.relu(backbone(x)))
        assert torch.equal(acts["conv5"], backbone.forward_taps(x, ["conv5"])["conv5"])
    with pytest.raises(ValueError, match="unknown probe tap"):
        tap_activations(backbone, x, ["conv9"])


def test_probe_on_separable_patterns_beats_chance():
    backbone = _backbone()
    images, labels = _patterns(200)
    config = ProbeConfig(epochs=2, batch_size=32, lr=0.01, seed=0, mean=MEAN, std=STD)
    taps = probe_taps(backbone, include_fc=True)
    result = linear_probe(
        backbone,
        images[:160],
        labels[:160],
        images[160:],
        labels[160:],
        taps=taps,
        config=config,
        progress=False,
    )
    assert list(result.top1) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc"]
    # each a share of the 40 held-out images classified right
    assert all(acc * 40 == pytest.approx(round(acc * 40), abs=1e-9) for acc in result.top1.values())
    assert max(result.top1.values()) >= 0.8  # chance is 0.25
    assert result.dims["conv1"] == 96 * 10 * 10 and result.dims["fc"] == 4096
    assert result.pool_sizes["fc"] is None
    assert all(len(losses) == 2 for losses in result.train_loss.values())
    assert backbone.training  # mode restored


def test_probe_is_deterministic_given_seed():
    backbone = _backbone()
    images, labels = _patterns(64, seed=1)

    def probe(seed: int):
        config = ProbeConfig(epochs=2, batch_size=16, seed=seed, mean=MEAN, std=STD)
        split = (images[:48], labels[:48], images[48:], labels[48:])
        return linear_probe(backbone, *split, ["conv1", "conv4"], config, progress=False)

    runs = [probe(3), probe(3)]
    assert runs[0].top1 == runs[1].top1
    assert runs[0].train_loss == runs[1].train_loss
    assert probe(4).train_loss != runs[0].train_loss


def test_input_validation():
    backbone = _backbone()
    images, labels = _patterns(8)
    with pytest.raises(ValueError, match="uint8"):
        linear_probe(backbone, images.float(), labels, images, labels, progress=False)
    with pytest.raises(ValueError, match="differ in number"):
        linear_probe(backbone, images, labels[:5], images, labels, progress=False)
