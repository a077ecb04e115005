"""Row selection in the JPEG-bytes archives of ../shared/datasets (see its README for the layout)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def archive_rows(archive: Mapping[str, np.ndarray], split: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The `jpeg_`, `off_`, `y_` and `files_` arrays of `split` holding only `rows`, in that order (repeats
    allowed), ready for `np.savez` beside the archive's `classes`."""
    offsets, blob = archive[f"off_{split}"], archive[f"jpeg_{split}"]
    pieces = [blob[offsets[i] : offsets[i + 1]] for i in rows]
    return {
        f"jpeg_{split}": np.concatenate(pieces),
        f"off_{split}": np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64),
        f"y_{split}": archive[f"y_{split}"][rows],
        f"files_{split}": archive[f"files_{split}"][rows],
    }
