"""Forward passes over a whole decoded data set in eval mode (clustering features, k-NN features)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from deepcluster.data.stream import batches
from deepcluster.engine.device import Precision
from deepcluster.models import channels_last


@torch.no_grad()
def extract_features(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    view: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    precision: Precision,
    progress: bool = False,
    desc: str = "features",
    allocate: Callable[[int, int], np.ndarray] | None = None,
) -> np.ndarray:
    """Apply `view` then `forward` to every image, batch by batch; float32 [N, D] on the host.

    The caller puts its modules in eval mode; `images` are uint8 [N, 3, S, S], on the host or already on the
    device (see `images_on_device`). `allocate(N, D)` gives the output array (e.g. a memory-mapped file when it
    would not fit in RAM); default: `np.empty`.
    """
    n = images.shape[0]
    out: np.ndarray | None = None  # allocated once the first batch shows D: no list of chunks to concatenate
    bar = tqdm(total=n, desc=desc, unit="img", disable=None if progress else True, leave=False)
    starts = range(0, n, batch_size)
    parts = batches(images, (slice(start, start + batch_size) for start in starts))
    for start, part in zip(starts, parts, strict=True):
        batch = part.to(precision.device, non_blocking=True)
        x = channels_last(view(batch))
        with precision.autocast():
            y = forward(x).float().flatten(1).cpu().numpy()
        if out is None:
            out = (allocate or _allocate_in_memory)(n, y.shape[1])
        out[start : start + y.shape[0]] = y
        bar.update(batch.shape[0])
    bar.close()
    if out is None:
        raise ValueError("extract_features: no images to extract features from")
    return out


def _allocate_in_memory(n: int, d: int) -> np.ndarray:
    return np.empty((n, d), dtype=np.float32)


def all_finite(array: np.ndarray, rows: int = 16384) -> bool:
    """True when every value is finite; reads `rows` rows at a time, so a memory-mapped array stays on disk."""
    return all(bool(np.isfinite(array[start : start + rows]).all()) for start in range(0, len(array), rows))
