"""Presenting evaluation results: fixed-width terminal tables and JSON-serialisable values."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Column = str | tuple[str, str]
"""A column: a row key, or ``(row key, header)``."""


def format_cell(value: Any, float_format: str = ".4f") -> str:
    """Text of one table cell: floats with ``float_format``, None and NaN as ``-``, the rest with ``str``."""
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        return "-" if math.isnan(value) else format(float(value), float_format)
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def format_table(
    rows: Sequence[Mapping[str, Any] | Sequence[Any]],
    columns: Sequence[Column] | None = None,
    float_format: str = ".4f",
    title: str | None = None,
) -> str:
    """A fixed-width text table: a header line, a rule, one line per row; numbers right-aligned, text left.

    ``rows`` are mappings (looked up by column key; a missing key shows ``-``) or sequences (taken in
    column order). ``columns`` defaults to the keys of the first mapping row; it is required for sequence rows.
    """
    if columns is None:
        if rows and isinstance(rows[0], Mapping):
            columns = list(rows[0].keys())
        else:
            raise ValueError("format_table needs `columns` unless the rows are mappings")
    keys = [col if isinstance(col, str) else col[0] for col in columns]
    headers = [col if isinstance(col, str) else col[1] for col in columns]
    cells: list[list[Any]] = []
    for row in rows:
        if isinstance(row, Mapping):
            cells.append([row.get(key) for key in keys])
        else:
            values = list(row)
            if len(values) != len(keys):
                raise ValueError(f"a row has {len(values)} values but there are {len(keys)} columns")
            cells.append(values)
    text = [[format_cell(value, float_format) for value in line] for line in cells]
    widths = [max([len(header), *(len(line[i]) for line in text)]) for i, header in enumerate(headers)]
    numeric = [
        bool(cells) and all(_is_number(line[i]) or line[i] is None for line in cells)
        for i in range(len(keys))
    ]

    def render(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [render(headers), "  ".join("-" * width for width in widths)]
    lines += [render(line) for line in text]
    if title:
        lines.insert(0, title)
    return "\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tensors, tuples, sets, Paths and dataclasses turned into JSON types.

    Mapping keys become strings; NaN and infinities become None (JSON has no such numbers).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        return to_jsonable(to_dict() if callable(to_dict) else dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(item) for item in items]
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot convert a {type(value).__name__} to JSON")


def dumps_json(value: Any, indent: int | None = 2) -> str:
    """JSON text of :func:`to_jsonable` ``(value)``."""
    return json.dumps(to_jsonable(value), indent=indent)


def write_json(path: str | Path, value: Any) -> Path:
    """Write :func:`dumps_json` ``(value)`` to ``path`` (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_json(value) + "\n")
    return path
