"""WebDataset tar shards as an image source: `--data 'shards/train-{000000..000099}.tar'`.

A shard is a tar file whose members are grouped into samples by key, the WebDataset way: `dir/000123.jpg`,
`dir/000123.cls` and `dir/000123.name` are the members "jpg", "cls" and "name" of sample `dir/000123` (the key
is the member's path up to the first dot of its file name). A sample's image is its first member with an image
extension (`IMAGE_MEMBERS`); "cls" (or "label", "class"), a decimal integer, is its true class, for evaluation
only, and "classname" that class's name; "name", when present, is the image's name (what `deepcluster shards`
stores: the original file's name), else the name is `SHARD:KEY`.

The source reads the shards' tar headers once when it opens (a sample table: shard, offset, size, in shard
order, then member order) and then reads any image directly at its offset, so the image index is stable and
everything that works on a folder (labels.csv, resume, `deepcluster assign`, the distributed split of the
indices over torchrun processes and data workers) works on shards. A member that does not decode is reported
by `SHARD:KEY` and skipped, as any bad image is.

`write_shards` makes shards from any source (`deepcluster shards FOLDER OUT --per-shard N`) with webdataset's
`TarWriter`, one shard at a time renamed into place when whole: the original file's bytes, its extension, its
name, its class and the class's name.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from deepcluster.data.sources.base import DataError, ImageSource, _describe, open_rgb
from deepcluster.data.sources.pread import PositionalFiles
from deepcluster.storage.files import atomic_write

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "bmp", "tif", "tiff", "gif")
CLASS_MEMBERS = ("cls", "label", "class")
CLASS_NAME_MEMBER = "classname"
"""The member with the class's name (a folder's class folder), beside its number in "cls"."""
_SHARD_MARKS = ("{", "*", "?")


def is_shard_spec(spec: str) -> bool:
    """Whether a `--data` value names tar shards (a .tar path, a brace pattern or a glob of them)."""
    return spec.endswith(".tar") or (".tar" in spec and any(mark in spec for mark in _SHARD_MARKS))


def expand_shards(spec: str) -> list[Path]:
    """The shard files of `spec`: braces expanded (`{000..009}`, `{a,b}`), then globs; each must exist."""
    try:
        from braceexpand import braceexpand  # webdataset's own dependency
    except ImportError:
        raise DataError(
            f"--data {spec}: tar shards need webdataset: pip install 'deepcluster[shards]'"
        ) from None

    paths: list[Path] = []
    for pattern in braceexpand(os.path.expanduser(spec)):
        if any(mark in pattern for mark in ("*", "?", "[")):
            found = sorted(Path(pattern).parent.glob(Path(pattern).name))
            if not found:
                raise DataError(f"--data {spec}: no shard matches {pattern}")
            paths += found
        else:
            paths.append(Path(pattern))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"--data {spec}: shard {missing[0]} does not exist ({len(missing)} of {len(paths)} missing)"
        )
    return paths


def _split_name(member: str) -> tuple[str, str]:
    folder, _, base = member.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower() if dot else ""


def _class_list(labels: np.ndarray, names: dict[int, set[str]]) -> list[str] | None:
    """The class names by class number, when every class in `labels` has exactly one name and the numbers run
    from 0 (as `deepcluster shards` writes them); else None (classes known by number only)."""
    if labels.min() < 0 or any(len(found) != 1 for found in names.values()):
        return None
    if set(names) != set(range(int(labels.max()) + 1)):
        return None
    return [next(iter(names[c])) for c in range(len(names))]


class ShardSource(ImageSource):
    """The samples of a list of WebDataset tar shards, in order (see the module's notes)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.shards = expand_shards(spec)
        tables: list[dict[str, np.ndarray]] = []  # one per shard: the sample table stays arrays, not objects
        class_names: dict[int, set[str]] = {}
        for number, path in enumerate(self.shards):
            samples = self._scan(path)
            labels = [sample["label"] for sample in samples]
            tables.append(
                {
                    "shard": np.full(len(samples), number, dtype=np.int32),
                    "offset": np.array([sample["offset"] for sample in samples], dtype=np.int64),
                    "size": np.array([sample["size"] for sample in samples], dtype=np.int64),
                    "name": np.array([sample["name"].encode() for sample in samples], dtype=np.bytes_),
                    "label": np.array([-1 if c is None else c for c in labels], dtype=np.int64),
                    "labelled": np.array([c is not None for c in labels], dtype=bool),
                }
            )
            for sample in samples:
                if sample["label"] is not None and sample["class_name"]:
                    class_names.setdefault(sample["label"], set()).add(sample["class_name"])
        table = {key: np.concatenate([t[key] for t in tables]) for key in tables[0]}
        if not len(table["name"]):
            raise DataError(f"--data {spec}: the {len(self.shards)} shard(s) hold no image members")
        self._shard, self._offset, self._size = table["shard"], table["offset"], table["size"]
        self._encoded_names = table["name"]  # UTF-8, fixed width: about the name's length per image
        if table["labelled"].all():
            self._labels = table["label"]
            self._classes = _class_list(self._labels, class_names)
        self._files = PositionalFiles(list(self.shards))
        self.description = _describe(f"{len(self.shards)} shard(s) {spec}", len(self), self._classes)
        if self._labels is not None and self._classes is None:
            self.description = self.description.replace("no labels", "with classes")

    def _scan(self, path: Path) -> list[dict[str, Any]]:
        """The samples of one shard, in member order: image offset and size, name, class."""
        samples: dict[str, dict[str, Any]] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:  # headers only: the data is skipped, not read
                    if not member.isfile():
                        continue
                    key, extension = _split_name(member.name)
                    sample = samples.setdefault(key, {"key": key})
                    if extension in IMAGE_MEMBERS and "offset" not in sample:
                        sample["offset"], sample["size"] = member.offset_data, member.size
                    elif extension in (*CLASS_MEMBERS, CLASS_NAME_MEMBER, "name"):
                        handle = tar.extractfile(member)
                        text = handle.read(1 << 16) if handle else b""
                        sample[extension] = text.decode("utf-8", "replace").strip()
        except (tarfile.TarError, OSError) as error:
            raise DataError(f"--data {self.spec}: {path} is not a readable tar shard ({error})") from None
        found = []
        for key, sample in samples.items():
            if "offset" not in sample:
                continue  # a sample without an image (metadata only): nothing to train on
            label = next((sample[c] for c in CLASS_MEMBERS if c in sample), None)
            found.append(
                {
                    "offset": sample["offset"],
                    "size": sample["size"],
                    "name": sample.get("name") or f"{path.name}:{key}",
                    "label": int(label) if label is not None and label.lstrip("-").isdigit() else None,
                    "class_name": sample.get(CLASS_NAME_MEMBER),
                }
            )
        return found

    def __len__(self) -> int:
        return len(self._encoded_names)

    def name(self, index: int) -> str:
        return self._encoded_names[self._check_index(index)].decode()

    def raw_bytes(self, index: int) -> bytes:
        """The image member's bytes of sample `index`, read at its offset (`PositionalFiles`: one descriptor
        per shard and process, shared by the decode threads)."""
        index = self._check_index(index)
        shard, offset, size = int(self._shard[index]), int(self._offset[index]), int(self._size[index])
        return self._files.read(shard, offset, size, f"sample {self.name(index)}")

    def load(self, index: int) -> Image.Image:
        data = self.raw_bytes(index)
        try:
            return open_rgb(io.BytesIO(data))
        except UnidentifiedImageError:  # PIL names the buffer object: say what it was
            raise UnidentifiedImageError(f"not an image (a member of {len(data)} bytes)") from None


def _member(source: ImageSource, index: int) -> tuple[str, bytes]:
    """(extension, bytes) of image `index` as stored: the original file when the source has one, else PNG."""
    path = getattr(source, "path", None)
    if callable(path):  # a folder or a file list: the file itself
        file = path(index)
        return file.suffix.lower().lstrip(".") or "jpg", file.read_bytes()
    raw = getattr(source, "raw_bytes", None)
    if raw is not None:
        data = raw(index)
        return ("jpg" if data.startswith(b"\xff\xd8") else "png"), data
    buffer = io.BytesIO()
    source.load(index).save(buffer, format="PNG")
    return "png", buffer.getvalue()


def write_shards(
    source: ImageSource, pattern: str, per_shard: int, progress: Callable[[int], None] | None = None
) -> list[str]:
    """Write every image of `source` into tar shards named by `pattern` (a printf pattern such as
    "out/train-%06d.tar"), `per_shard` samples each: its bytes, name, class and class name. Each shard is
    written to a temporary file and renamed into place when complete (`storage.atomic_write`): a killed
    writer leaves whole shards only. Returns the shard paths."""
    try:
        import webdataset
    except ImportError:
        raise DataError("deepcluster shards needs webdataset: pip install 'deepcluster[shards]'") from None
    if "%" not in pattern:
        raise DataError(f"{pattern}: give a shard name pattern with a number in it, e.g. out/train-%06d.tar")
    if per_shard < 1:
        raise DataError(f"--per-shard {per_shard}: must be at least 1")
    labels, classes = source.labels, source.classes
    written: list[str] = []

    def write_one(first: int, handle: IO[bytes]) -> None:
        with webdataset.TarWriter(handle, mtime=0) as sink:
            for index in range(first, min(len(source), first + per_shard)):
                extension, data = _member(source, index)
                sample = {"__key__": f"{index:09d}", extension: data, "name": source.name(index).encode()}
                if labels is not None and labels[index] >= 0:
                    sample["cls"] = str(int(labels[index])).encode()
                    if classes is not None:
                        sample[CLASS_NAME_MEMBER] = classes[int(labels[index])].encode()
                sink.write(sample)
                if progress is not None:
                    progress(index)

    for number, first in enumerate(range(0, len(source), per_shard)):
        path = pattern % number
        atomic_write(path, lambda handle, first=first: write_one(first, handle))
        written.append(path)
    return written
