"""Image sources: finite, indexable collections of images (folders, arrays, JPEG archives, torchvision sets).

Every source returns RGB :class:`PIL.Image.Image` objects from :meth:`ImageSource.load`. True labels, when a
source has them, are only meant for evaluation. Transparent images are composited on a white background.

This package holds :func:`open_source`, which picks the source for a ``--data`` value; the sources live in
``base`` (:class:`ImageSource`, :class:`DataError`, :func:`to_rgb`, :func:`open_rgb`), ``files`` (folders and
image lists), ``archives`` (arrays, image-bytes archives, the embedded data set), ``shards`` (WebDataset tar shards) and
``torchvision_sets``.
"""

from __future__ import annotations

import os
from pathlib import Path

from deepcluster.data.sources.archives import (
    EMBEDDED_NAME,
    ArraySource,
    JpegBytesSource,
    _npz_has_jpeg_keys,
    embedded_source,
)
from deepcluster.data.sources.base import DataError, ImageSource, open_rgb, to_rgb
from deepcluster.data.sources.files import IMAGE_EXTENSIONS, FileListSource, FolderSource
from deepcluster.data.sources.shards import ShardSource, is_shard_spec, write_shards
from deepcluster.data.sources.torchvision_sets import (
    TORCHVISION_NAMES,
    TorchvisionSource,
    canonical_dataset_name,
)

__all__ = [
    "EMBEDDED_NAME",
    "IMAGE_EXTENSIONS",
    "LIST_EXTENSIONS",
    "TORCHVISION_NAMES",
    "ArraySource",
    "DataError",
    "FileListSource",
    "FolderSource",
    "ImageSource",
    "JpegBytesSource",
    "ShardSource",
    "TorchvisionSource",
    "canonical_dataset_name",
    "embedded_source",
    "open_source",
    "open_rgb",
    "to_rgb",
    "write_shards",
]

LIST_EXTENSIONS: tuple[str, ...] = (".txt", ".lst")
"""File extensions that :func:`open_source` reads as image lists."""


def open_source(
    spec: str | os.PathLike[str] | None,
    root: str | None = None,
    split: str | None = None,
    download: bool = False,
) -> ImageSource:
    """Open the image source named by ``spec`` (the ``--data`` option).

    Resolution order: None, "" or "embedded" -> packaged CIFAR-10 test split; tar shards (a .tar path, a
    brace pattern or a glob of them) -> :class:`ShardSource`; an existing folder -> :class:`FolderSource`; an
    existing .npz -> :class:`JpegBytesSource` when it has ``jpeg_*`` keys, else :meth:`ArraySource.from_npz`;
    an existing .txt/.lst -> :class:`FileListSource`; a torchvision data set name -> :class:`TorchvisionSource`
    (``root`` default "./data", ``split`` default "train"). ``split`` is ignored by sources without splits
    (folders, arrays, lists, shards).
    """
    if spec is None or str(spec).strip() in ("", EMBEDDED_NAME):
        if split is not None and split != "test":
            raise DataError(f"--split {split}: the embedded data set only has the split 'test'")
        return embedded_source()
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if is_shard_spec(text) and not path.is_dir():
        return ShardSource(text)
    if path.is_dir():
        return FolderSource(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            if _npz_has_jpeg_keys(path):
                return JpegBytesSource(path, split)
            return ArraySource.from_npz(path)
        if suffix in LIST_EXTENSIONS:
            return FileListSource(path)
        raise DataError(
            f"--data {text}: unsupported file type '{path.suffix}'; give a folder of images, an .npz "
            f"archive, a {'/'.join(LIST_EXTENSIONS)} list of image paths, or a data set name"
        )
    key = canonical_dataset_name(text)
    if key is not None:
        return TorchvisionSource(key, root if root is not None else "./data", split or "train", download)
    choices = ", ".join((EMBEDDED_NAME,) + TORCHVISION_NAMES)
    raise DataError(
        f"--data {text}: no such file or folder, and not a known data set name (choose from {choices})"
    )
