"""What every part of the report hands to the page: PNG pictures with a title and a caption, written atomically."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is ever needed

from matplotlib.figure import Figure  # noqa: E402


@dataclass(frozen=True)
class Picture:
    """One PNG of the report: `path` is relative to the report folder (what the page's <img src> holds)."""

    title: str
    path: str
    caption: str = ""


def save_figure(figure: Figure, path: Path, dpi: int = 100) -> None:
    """Write `figure` as a PNG at `path` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, format="png", dpi=dpi, bbox_inches="tight")
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a report is meant to be shared
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
