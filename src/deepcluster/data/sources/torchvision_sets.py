"""Standard data sets read through torchvision: :class:`TorchvisionSource` and the table of accepted names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepcluster.data.sources.base import DataError, ImageSource, _describe, to_rgb

# name -> (torchvision class name, allowed splits, folder torchvision looks for under root)
_TORCHVISION_SETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "cifar10": ("CIFAR10", ("train", "test"), "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", ("train", "test"), "cifar-100-python"),
    "stl10": ("STL10", ("train", "test", "unlabeled"), "stl10_binary"),
    "mnist": ("MNIST", ("train", "test"), "MNIST/raw"),
    "fashion-mnist": ("FashionMNIST", ("train", "test"), "FashionMNIST/raw"),
    "svhn": ("SVHN", ("train", "test", "extra"), "train_32x32.mat / test_32x32.mat / extra_32x32.mat"),
}
_ALIASES: dict[str, str] = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "stl-10": "stl10",
}

TORCHVISION_NAMES: tuple[str, ...] = tuple(_TORCHVISION_SETS)
"""Data set names accepted by :class:`TorchvisionSource` (also aliases such as fashion_mnist, cifar-10)."""


def canonical_dataset_name(name: str) -> str | None:
    """The canonical torchvision data set name for ``name`` (case-insensitive), or None if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in _TORCHVISION_SETS else None


class TorchvisionSource(ImageSource):
    """A standard data set read through torchvision (never downloads unless ``download=True``)."""

    def __init__(
        self, name: str, root: str | os.PathLike[str] = "./data", split: str = "train", download: bool = False
    ) -> None:
        import torchvision.datasets as datasets

        key = canonical_dataset_name(name)
        if key is None:
            raise DataError(
                f"--data {name}: not a known data set name (choose from {', '.join(TORCHVISION_NAMES)})"
            )
        class_name, splits, folder = _TORCHVISION_SETS[key]
        if split not in splits:
            raise DataError(f"--split {split}: {key} has no such split; choose from {', '.join(splits)}")
        self.dataset_name = key
        self.split = split
        self.root = Path(root).expanduser()
        dataset_cls = getattr(datasets, class_name)
        kwargs: dict[str, Any] = {"download": download}
        if key in ("stl10", "svhn"):
            kwargs["split"] = split
        else:
            kwargs["train"] = split == "train"
        try:
            self._dataset = dataset_cls(str(self.root), **kwargs)
        except RuntimeError as error:
            if download:
                raise DataError(f"--data {key}: download into {self.root} failed ({error})") from error
            raise DataError(
                f"--data {key}: files of split '{split}' not found or corrupt under {self.root.resolve()} "
                f"(torchvision looks for {folder} there; {error}). Pass --download to fetch them, or point "
                f"--data-root at the folder that holds them."
            ) from error
        except ImportError as error:
            raise DataError(
                f"--data {key}: reading this data set needs a missing package ({error})"
            ) from error
        except OSError as error:
            raise DataError(
                f"--data {key}: could not fetch or read the files under {self.root} ({error})"
            ) from error
        self._labels = self._read_labels()
        self._classes = self._read_classes()
        self.description = _describe(
            f"{key} split '{split}' from {self.root}", len(self._dataset), self._classes
        )

    def _read_labels(self) -> np.ndarray | None:
        raw = getattr(self._dataset, "targets", None)
        if raw is None:
            raw = getattr(self._dataset, "labels", None)
        if raw is None:
            return None
        labels = np.asarray(raw.numpy() if hasattr(raw, "numpy") else raw).astype(np.int64).reshape(-1)
        if labels.size == 0 or np.all(labels < 0):  # e.g. STL-10 'unlabeled': every label is -1
            return None
        return labels

    def _read_classes(self) -> list[str] | None:
        if self._labels is None:
            return None
        classes = getattr(self._dataset, "classes", None)
        if classes:
            return [str(c) for c in classes]
        return [str(i) for i in range(int(self._labels.max()) + 1)]  # SVHN: digits 0..9

    def __len__(self) -> int:
        return len(self._dataset)

    def load(self, index: int) -> Image.Image:
        image = self._dataset[self._check_index(index)][0]
        return to_rgb(image)
