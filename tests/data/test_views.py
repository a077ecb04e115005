import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
import torchvision.transforms.v2.functional as F2

from deepcluster.data.views import ClusterView, TrainView, resized_crops, sample_crop_boxes

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images(n=4, size=40, seed=0):
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_cluster_view_is_torchvision_center_crop_and_normalize():
    images = _images(size=40)
    view = ClusterView(32, MEAN, STD)
    expected = torch.stack(
        [F.normalize(F.center_crop(img, [32, 32]).float() / 255.0, MEAN, STD) for img in images]
    )
    assert torch.allclose(view(images), expected, atol=1e-6)


def test_cluster_view_rejects_images_smaller_than_input():
    with pytest.raises(ValueError):
        ClusterView(64, MEAN, STD)(_images(size=32))


def test_train_view_full_crop_is_identity_or_mirror():
    images = _images(n=64, size=32)
    view = TrainView(32, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    out = view(images, torch.Generator().manual_seed(0))
    plain = ClusterView(32, MEAN, STD)(images)
    same = torch.isclose(out, plain, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(out, plain.flip(-1), atol=1e-5).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 16 < mirrored.sum() < 48  # about half flipped


@pytest.mark.parametrize(("height", "width", "size"), [(64, 64, 32), (40, 56, 48), (256, 256, 224)])
def test_train_view_crops_are_torchvision_resized_crops_pixel_for_pixel(height: int, width: int, size: int):
    images = torch.randint(
        0, 256, (6, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = sample_crop_boxes(6, height, width, scale, ratio, torch.Generator().manual_seed(2))
    view = TrainView(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), scale=scale, ratio=ratio, flip=False)
    out = view(images, torch.Generator().manual_seed(2))
    for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        ref = F2.resized_crop(images[i], y1, x1, y2 - y1, x2 - x1, [size, size], antialias=True)
        assert ref.dtype == torch.uint8
        torch.testing.assert_close(out[i], ref.float() / 255.0, rtol=0, atol=1e-7)
    # the batched roi_align crops (used on GPUs) resample the same regions: within a few grey levels on average
    batched = resized_crops(images, boxes, size, batched=True) / 255.0
    assert (batched - out).abs().mean() < 0.02 and (batched - out).abs().mean() > 0


def test_crop_boxes_match_torchvision_random_resized_crop_statistics():
    n, size = 20000, 32
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    boxes = sample_crop_boxes(n, size, size, scale, ratio, torch.Generator().manual_seed(0))
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= size).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= size).all()
    torch.manual_seed(0)
    image = torch.zeros(3, size, size)
    ref = np.array([T.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)])
    ref_top, ref_left, ref_h, ref_w = (torch.tensor(ref[:, i], dtype=torch.float32) for i in range(4))

    def close(a, b, tol):
        return abs(float(a) - float(b)) < tol

    area, ref_area = (w * h) / size**2, (ref_w * ref_h) / size**2
    assert close(area.mean(), ref_area.mean(), 0.01)
    assert close(area.std(), ref_area.std(), 0.01)
    log_aspect, ref_log_aspect = torch.log(w / h), torch.log(ref_w / ref_h)
    assert close(log_aspect.mean(), ref_log_aspect.mean(), 0.01)
    assert close(log_aspect.std(), ref_log_aspect.std(), 0.01)
    center_x, ref_center_x = boxes[:, 0] + w / 2, ref_left + ref_w / 2
    center_y, ref_center_y = boxes[:, 1] + h / 2, ref_top + ref_h / 2
    for ours, theirs in ((center_x, ref_center_x), (center_y, ref_center_y)):
        assert close(ours.mean(), theirs.mean(), 0.15)
        assert close(ours.std(), theirs.std(), 0.15)
    for q in (0.05, 0.5, 0.95):
        assert close(torch.quantile(area, q), torch.quantile(ref_area, q), 0.02)
    assert area.min() >= scale[0] * 0.8 and area.max() <= 1.0
    assert math.log(ratio[0]) - 0.2 < log_aspect.min() and log_aspect.max() < math.log(ratio[1]) + 0.2


def test_train_view_is_fixed_by_the_generator_seed():
    images = _images(n=8, size=32)
    view = TrainView(32, MEAN, STD, scale=(0.2, 1.0), color_jitter=0.4, grayscale_prob=0.2)
    a = view(images, torch.Generator().manual_seed(7))
    b = view(images, torch.Generator().manual_seed(7))
    c = view(images, torch.Generator().manual_seed(8))
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_color_jitter_changes_brightness_and_stays_in_range():
    images = _images(n=32, size=16)
    no_jitter = TrainView(16, (0.0,) * 3, (1.0,) * 3, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    jitter = TrainView(
        16,
        (0.0,) * 3,
        (1.0,) * 3,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip=False,
        color_jitter=0.8,
        grayscale_prob=1.0,
    )
    base = no_jitter(images, torch.Generator().manual_seed(0))
    out = jitter(images, torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])  # all grayscale
    assert not torch.allclose(out.mean(dim=(1, 2, 3)), base.mean(dim=(1, 2, 3)), atol=0.01)
