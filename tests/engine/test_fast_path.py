"""The fast input path (decode once to uint8, batched views) against the reference per-image PIL/torchvision
pipeline of `deepcluster.data.reference`: same cluster-view pixels, same crop/flip distributions, same
features and k-means labels on a small real run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms as T

from deepcluster.cluster.kmeans import kmeans
from deepcluster.cluster.metrics import nmi
from deepcluster.cluster.preprocess import pca_whiten
from deepcluster.config import IMAGENET_MEAN, IMAGENET_STD
from deepcluster.data.decode import decode_images
from deepcluster.data.reference import reference_cluster_transform, reference_loader
from deepcluster.data.sources import FolderSource
from deepcluster.data.views import ClusterView, TrainView, sample_crop_boxes
from deepcluster.engine.device import Precision
from deepcluster.engine.features import extract_features
from deepcluster.models import build_backbone
from synthetic import noise_image, pattern_images

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD

# (width, height): landscape, portrait, square, odd x odd, odd x even, square smaller than every resize
IMAGE_SIZES = [(40, 30), (30, 52), (64, 64), (33, 47), (45, 32), (31, 31)]

# The fast path crops twice (decode: long side to `resize`, ClusterView: `resize` to `input_size`), the
# reference once (long side straight to `input_size`). Each centre crop rounds its offset half-to-even, so
# with a = long side margin after the resize and b = resize - input_size, two centred crops would give
# round(a / 2) + round(b / 2) != round((a + b) / 2) when (a % 4, b % 4) is (1, 1), (3, 3), (2, 1), (2, 3),
# (1, 2) or (3, 2); decoding with `inner_size` places the square so the total is torchvision's. The size
# pairs below include such margins (33 -> 32, 32 -> 31, 35 -> 32).


def _write_images(folder: Path, images: list[Image.Image]) -> FolderSource:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(folder / f"img_{i:04d}.png")
    return FolderSource(folder)


@pytest.mark.parametrize(
    ("resize", "input_size"),
    [
        (32, 32),
        (32, 28),
        (36, 32),
        (33, 32),
        (32, 31),
        (35, 32),
    ],
)
def test_cluster_view_equals_torchvision_resize_center_crop_normalize(
    tmp_path: Path, resize: int, input_size: int
) -> None:
    images = [noise_image(w, h, seed) for seed, (w, h) in enumerate(IMAGE_SIZES)]
    source = _write_images(tmp_path / "images", images)
    decoded = decode_images(source, resize, num_threads=1, progress=False, inner_size=input_size)
    assert decoded.images.shape == (len(images), 3, resize, resize) and decoded.skipped == []
    fast = ClusterView(input_size, MEAN, STD)(decoded.images)
    reference = reference_cluster_transform(resize, input_size, MEAN, STD)
    expected = torch.stack([reference(source.load(i)) for i in range(len(source))])
    assert fast.shape == expected.shape == (len(images), 3, input_size, input_size)
    # Both paths divide the same uint8 pixels by 255 and normalise with the same float32 ops, so they agree to
    # float32 rounding; one uint8 step is 1 / 255 / std ~ 0.017, and a one-pixel shift of noise is ~1.
    for i in range(len(images)):
        torch.testing.assert_close(fast[i], expected[i], rtol=0, atol=1e-6, msg=f"image {IMAGE_SIZES[i]}")


def _box_statistics(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """Area fraction, log aspect ratio and normalised centre of (x1, y1, x2, y2) boxes."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return {
        "area": w * h / (height * width),
        "log_aspect": np.log(w / h),
        "centre_x": (boxes[:, 0] + boxes[:, 2]) / (2 * width),
        "centre_y": (boxes[:, 1] + boxes[:, 3]) / (2 * height),
    }


def _torchvision_boxes(n: int, height: int, width: int, scale: tuple, ratio: tuple, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    image = torch.empty(3, height, width)
    params = [T.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)]
    top, left, h, w = np.asarray(params, dtype=np.float64).T
    return np.stack([left, top, left + w, top + h], axis=1)


def _bounds_with_rounding(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[float, float, float]:
    """Smallest area fraction and extreme log aspect ratios a kept draw can have once w and h are rounded."""
    target = height * width * scale[0]
    lo_w, lo_h = math.sqrt(target * ratio[0]), math.sqrt(target / ratio[0])
    hi_w, hi_h = math.sqrt(target * ratio[1]), math.sqrt(target / ratio[1])
    min_area = min((lo_w - 0.5) * (lo_h - 0.5), (hi_w - 0.5) * (hi_h - 0.5)) / (height * width)
    return min_area, math.log((lo_w - 0.5) / (lo_h + 0.5)), math.log((hi_w + 0.5) / (hi_h - 0.5))


@pytest.mark.parametrize(("height", "width"), [(32, 32), (24, 40)])
def test_crop_boxes_have_torchvision_distributions(one_thread: None, height: int, width: int) -> None:
    n, scale, ratio = 20_000, (0.08, 1.0), (3 / 4, 4 / 3)
    ours = (
        sample_crop_boxes(n, height, width, scale, ratio, torch.Generator().manual_seed(0)).double().numpy()
    )
    theirs = _torchvision_boxes(n, height, width, scale, ratio, seed=1)
    assert np.array_equal(ours, np.round(ours))  # integer pixel boxes, like torchvision's (i, j, h, w)
    assert (ours[:, :2] >= 0).all() and (ours[:, 2] <= width).all() and (ours[:, 3] <= height).all()
    assert (ours[:, 2] > ours[:, 0]).all() and (ours[:, 3] > ours[:, 1]).all()
    ours_stats, their_stats = _box_statistics(ours, height, width), _box_statistics(theirs, height, width)
    for name in ours_stats:
        result = stats.ks_2samp(ours_stats[name], their_stats[name])
        assert result.pvalue > 1e-3, f"{name}: KS statistic {result.statistic:.4f}, p={result.pvalue:.2g}"
    # every draw lies in the configured ranges, widened only by the rounding of w and h to whole pixels
    min_area, min_log_aspect, max_log_aspect = _bounds_with_rounding(height, width, scale, ratio)
    area, log_aspect = ours_stats["area"], ours_stats["log_aspect"]
    assert min_area <= area.min() and area.max() <= scale[1]
    assert min_log_aspect <= log_aspect.min() and log_aspect.max() <= max_log_aspect
    # and the extremes reached are torchvision's (the largest crop of a 24 x 40 image is 32 x 24 + rounding)
    for name, tolerance in (("area", 0.02), ("log_aspect", 0.05), ("centre_x", 0.05), ("centre_y", 0.05)):
        for extreme in (np.min, np.max):
            ours_extreme, their_extreme = extreme(ours_stats[name]), extreme(their_stats[name])
            assert abs(ours_extreme - their_extreme) <= tolerance, f"{name} {extreme.__name__}"


def test_crop_box_fallback_is_placed_like_torchvision() -> None:
    # 24 x 43 with scale 1: every draw is taller than the image, so both use the clamped-ratio fallback (32 x 24)
    height, width, scale, ratio = 24, 43, (1.0, 1.0), (3 / 4, 4 / 3)
    ours = sample_crop_boxes(4, height, width, scale, ratio, torch.Generator().manual_seed(0))
    theirs = _torchvision_boxes(4, height, width, scale, ratio, seed=0)
    assert np.array_equal(ours.double().numpy(), theirs)


def test_train_view_flips_half_the_images(one_thread: None) -> None:
    # torchvision's RandomHorizontalFlip() mirrors each image with probability 0.5; so must TrainView
    n, size = 4000, 8
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, size)[None, None, :, None]  # brighter to the right: never mirror-symmetric
    pixels = np.clip(ramp + rng.integers(0, 50, size=(n, size, size, 3)), 0, 255).astype(np.uint8)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    view = TrainView(size, (0.0,) * 3, (1.0,) * 3, scale=(1.0, 1.0), ratio=(1.0, 1.0), color_jitter=0.0)
    out = view(images, torch.Generator().manual_seed(0))
    plain = images.float() / 255.0
    same = torch.isclose(out, plain, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(out, plain.flip(-1), atol=1e-5).flatten(1).all(1)
    assert not (same & mirrored).any() and (same | mirrored).all()
    flipped = int(mirrored.sum())
    assert stats.binomtest(flipped, n, 0.5).pvalue > 1e-3, f"{flipped} of {n} flipped"


def _pattern_folder(folder: Path, n: int) -> FolderSource:
    """n labelled-pattern images upscaled to 32 x 32, 40 x 32 or 32 x 44 (width x height), as PNG files."""
    patterns, _ = pattern_images(n, seed=1)
    sizes = [(32, 32), (40, 32), (32, 44)]
    images = [
        Image.fromarray(p).resize(sizes[i % len(sizes)], Image.Resampling.BILINEAR)
        for i, p in enumerate(patterns)
    ]
    return _write_images(folder, images)


def test_features_and_kmeans_labels_agree_between_paths(tmp_path: Path, one_thread: None) -> None:
    resize, input_size, batch_size = 36, 32, 50
    source = _pattern_folder(tmp_path / "patterns", 200)
    torch.manual_seed(0)
    backbone = build_backbone("alexnet_small", sobel=True, input_size=input_size).eval()

    decoded = decode_images(source, resize, num_threads=1, progress=False, inner_size=input_size)
    view = ClusterView(input_size, MEAN, STD)
    fast = extract_features(
        backbone, decoded.images, view, batch_size, Precision(torch.device("cpu"), "fp32")
    )

    loader = reference_loader(source, reference_cluster_transform(resize, input_size, MEAN, STD), batch_size)
    reference_batches = list(loader)
    torch.testing.assert_close(view(decoded.images), torch.cat(reference_batches), rtol=0, atol=1e-6)
    with torch.no_grad():
        reference = np.concatenate([backbone(batch).numpy() for batch in reference_batches])

    assert fast.shape == reference.shape == (200, backbone.feature_dim) and fast.dtype == np.float32
    # The inputs agree to float32 rounding (checked above); only the forward differs (channels-last vs
    # contiguous conv kernels), so the features agree to float32 accumulation error relative to their scale.
    scale = float(np.abs(reference).max())
    assert scale > 0
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-4 * scale)

    fast_labels = kmeans(pca_whiten(fast, 32), 10, n_iter=20, seed=0).labels
    reference_labels = kmeans(pca_whiten(reference, 32), 10, n_iter=20, seed=0).labels
    assert len(np.unique(fast_labels)) > 1
    assert nmi(fast_labels, reference_labels) >= 0.95
