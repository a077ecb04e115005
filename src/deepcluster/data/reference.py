"""The reference implementation's input pipeline: a torch DataLoader decoding and transforming one PIL image at
a time, twice per epoch (cluster view, then train view).

This is the baseline `benchmarks/epoch.py` measures the fast path against, and what the tests compare the fast
path's views, features and labels with. It is not used for training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from deepcluster.data.sources import ImageSource


def reference_cluster_transform(
    resize: int, input_size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable:
    """Resize (shorter side) + CenterCrop + ToTensor + Normalize, as the reference computes its features."""
    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(input_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def reference_train_transform(
    resize: int,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Callable:
    """Resize + CenterCrop (the same square the fast path decodes once), then RandomResizedCrop +
    RandomHorizontalFlip + ToTensor + Normalize."""
    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(resize),
            T.RandomResizedCrop(input_size, scale=scale, ratio=ratio, antialias=True),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


class TransformedImages(Dataset):
    """Image ``i`` of a source (optionally drawn through ``indices``), loaded with PIL and transformed."""

    def __init__(
        self, source: ImageSource, transform: Callable, indices: Sequence[int] | None = None
    ) -> None:
        self.source = source
        self.transform = transform
        self.indices = list(range(len(source))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> torch.Tensor:
        return self.transform(self.source.load(self.indices[position]))


def reference_loader(
    source: ImageSource,
    transform: Callable,
    batch_size: int,
    indices: Sequence[int] | None = None,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``source`` in the given order (no shuffling: the order comes from ``indices``)."""
    return DataLoader(
        TransformedImages(source, transform, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
