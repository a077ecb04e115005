"""`deepcluster embed` and `deepcluster assign` over a whole data source, streamed: images are decoded and
passed a batch at a time, rows are written as they come (memory holds one batch plus the names), unreadable
images are reported and skipped, and the output appears atomically when complete."""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from deepcluster.config import ConfigError
from deepcluster.data.sources import ImageSource
from deepcluster.methods.predict import Prediction
from deepcluster.storage import RunDir, atomic_write, atomic_write_text
from deepcluster.use.images import Batch, batches_of_source

log = logging.getLogger("deepcluster")


class TrainedRun(Protocol):
    """What these writers use of `use.run.TrainedRun` (which imports this module, so it is not imported here)."""

    config: Any
    run_dir: RunDir

    @property
    def resize(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    def embed_batch(self, images: torch.Tensor, layer: str | None = None) -> np.ndarray: ...

    def assign_batch(self, images: torch.Tensor) -> Prediction: ...


def _batches(run: TrainedRun, source: ImageSource, progress: bool, what: str) -> Iterator[Batch]:
    bar = tqdm(total=len(source), desc=what, unit="img", disable=None if progress else True, leave=False)
    for batch in batches_of_source(source, run.resize, int(run.config.data.input_size), run.batch_size):
        for name, reason in batch.skipped:
            log.warning("%s: skipped (%s)", name, reason)
        yield batch
        bar.update(len(batch.names) + len(batch.skipped))
    bar.close()


def _check_out(out: Path, suffixes: tuple[str, ...]) -> None:
    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"--out {out}: give a file name ending in {' or '.join(suffixes)}")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name")
    folder = out.parent if str(out.parent) else Path(".")
    if not os.access(folder if folder.exists() else folder.parent, os.W_OK):
        raise ConfigError(f"--out {out}: cannot write in {folder}")


def names_file(out: Path) -> Path:
    """`embeddings.npy` -> `embeddings.names.txt` (one image name per row of the array)."""
    return out.with_suffix(".names.txt")


def write_embeddings(
    run: TrainedRun,
    source: ImageSource,
    out: str | os.PathLike[str],
    layer: str | None = None,
    progress: bool = True,
) -> tuple[int, list[tuple[str, str]]]:
    """One L2-normalised embedding per readable image of `source` into `out`: `.npy` (float32 [N, D]) with its
    names in `.names.txt`, or `.parquet` (columns index, image, embedding). Returns (rows, skipped)."""
    out = Path(out)
    _check_out(out, (".npy", ".parquet"))
    if out.suffix.lower() == ".parquet":
        return _write_parquet(run, source, out, layer, progress)
    names, _, skipped = write_npy(run, source, out, layer, progress)
    atomic_write_text(names_file(out), "".join(f"{name}\n" for name in names))
    return len(names), skipped


def write_npy(
    run: TrainedRun,
    source: ImageSource,
    out: Path,
    layer: str | None = None,
    progress: bool = True,
    what: str = "embed",
) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """The embeddings of `source`'s readable images as float32 [N, D] into `out` (.npy, atomically, streamed
    through a scratch file beside it). Returns their names, their source indices and the skipped images."""
    names: list[str] = []
    indices: list[int] = []
    skipped: list[tuple[str, str]] = []
    dim = 0
    with tempfile.TemporaryFile(dir=out.parent if str(out.parent) else ".") as raw:
        for batch in _batches(run, source, progress, what):
            skipped += batch.skipped
            if len(batch.names):
                values = run.embed_batch(batch.images, layer)
                dim = values.shape[1]
                raw.write(np.ascontiguousarray(values, dtype=np.float32).tobytes())
                names += batch.names
                indices += batch.indices
        if not names:
            raise ConfigError(f"--data {source.description}: none of its images could be read")

        def write(handle: IO[bytes]) -> None:  # the .npy header, then the rows streamed from the scratch file
            np.lib.format.write_array_header_1_0(
                handle, {"descr": "<f4", "fortran_order": False, "shape": (len(names), dim)}
            )
            raw.seek(0)
            while chunk := raw.read(1 << 24):
                handle.write(chunk)

        atomic_write(out, write)
    return names, indices, skipped


def _write_parquet(
    run: TrainedRun, source: ImageSource, out: Path, layer: str | None, progress: bool
) -> tuple[int, list[tuple[str, str]]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"--out {out}: Parquet needs pyarrow; pip install 'deepcluster[parquet]'") from None
    rows, skipped = 0, []
    writer: Any = None
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        for batch in _batches(run, source, progress, "embed"):
            skipped += batch.skipped
            if not batch.names:
                continue
            values = run.embed_batch(batch.images, layer)
            embedding = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
            table = pa.table({"index": batch.indices, "image": batch.names, "embedding": embedding})
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += len(batch.names)
        if writer is None:
            raise ConfigError(f"--data {source.description}: none of its images could be read")
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows, skipped


def assignment_columns(prediction: Prediction) -> list[str]:
    """labels.csv's names for each label set (cluster, cluster_h1, ...), each with its score and runner-up."""
    columns = []
    for h in range(prediction.labels.shape[1]):
        name = "cluster" if h == 0 else f"cluster_h{h}"
        score = prediction.score_name
        columns += [name, f"{name}_{score}", f"{name}_runner_up", f"{name}_runner_up_{score}"]
    return columns


def write_assignments(
    run: TrainedRun, source: ImageSource, out: str | os.PathLike[str], progress: bool = True
) -> tuple[int, list[tuple[str, str]]]:
    """assignments.csv: index, image, then per label set its cluster, score, runner-up and its score."""
    out = Path(out)
    _check_out(out, (".csv",))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    rows, skipped = 0, []
    for batch in _batches(run, source, progress, "assign"):
        skipped += batch.skipped
        if not batch.names:
            continue
        prediction = run.assign_batch(batch.images)
        if rows == 0:
            writer.writerow(["index", "image", *assignment_columns(prediction)])
        rows += _rows(writer, batch, prediction)
    if rows == 0:
        raise ConfigError(f"--data {source.description}: none of its images could be read")
    atomic_write_text(out, buffer.getvalue())
    return rows, skipped


def _rows(writer: Any, batch: Batch, prediction: Prediction) -> int:
    fmt: Callable[[float], str] = lambda v: f"{v:.6g}"  # noqa: E731
    for i, (index, name) in enumerate(zip(batch.indices, batch.names, strict=True)):
        cells: list[Any] = [index, name]
        for h in range(prediction.labels.shape[1]):
            cells += [int(prediction.labels[i, h]), fmt(prediction.score[i, h])]
            cells += [int(prediction.runner_up[i, h]), fmt(prediction.runner_score[i, h])]
        writer.writerow(cells)
    return len(batch.names)
