"""Command-line flags declared once: an option's flag (`option(..., flag=...)`) as an argparse argument and back,
and the flags every command shares (-q, --no-progress, --trust-checkpoint) with one help text each."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import Field
from typing import Any

from deepcluster.config.options import OptionInfo, declared_kind, section_options

TRUST_HELP = (
    "load checkpoints that need a full unpickle (written by an older deepcluster); it can run code from the "
    "file: only for files you trust"
)
"""The help of every command's --trust-checkpoint."""

Flagged = tuple[str, Field[Any], OptionInfo]
"""(section, field, info) of an option that has a command-line flag."""

_ARGUMENT_TYPES: dict[str, type] = {"int": int, "float": float}
"""The argparse type of a flag by the kind its option declares (`str` for any other)."""


def add_common_flags(parser: argparse.ArgumentParser, *, progress: bool = False, trust: bool = False) -> None:
    """The flags commands share, each with its one help text: --no-progress and --trust-checkpoint where the
    command has them, and -q (every command)."""
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    if trust:
        parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def section_flags(section: str, kind: Any) -> list[Flagged]:
    """(section, field, info) of every option of the section dataclass `kind` that has a flag."""
    return [(section, item, info) for item, info in section_options(kind) if info.flag]


def _dest(section: str, name: str) -> str:
    return f"{section}__{name}"


def add_option_flags(parser: argparse.ArgumentParser, options: Iterable[Flagged]) -> None:
    """An argument for each flagged option: a bool's flag sets the opposite of its default; a `tuple[int, ...]`
    takes one or more values; the others one value of the declared type. Unset flags read None (see
    `given_flags`)."""
    for section, item, info in options:
        dest = _dest(section, item.name)
        kind, _ = declared_kind(item)
        if kind == "bool":
            what = f"turn off {section}.{item.name}: " if item.default else ""
            parser.add_argument(info.flag, dest=dest, action="store_true", help=what + info.help)
            continue
        shown = "" if item.default is None or "default" in info.help else f" (default {item.default})"
        element = kind[len("tuple[") : -len(", ...]")] if kind.endswith(", ...]") else None
        parser.add_argument(
            info.flag,
            dest=dest,
            type=_ARGUMENT_TYPES.get(element or kind, str),
            nargs="+" if element else None,
            metavar=info.metavar or item.name.upper(),
            help=(info.help + shown).replace("%", "%%"),
        )


def given_flags(
    args: argparse.Namespace, options: Iterable[Flagged]
) -> list[tuple[str, str, OptionInfo, Any]]:
    """(section, option, info, value) of every flagged option given on the command line (a bool flag's value is
    the opposite of the option's default; several values are a tuple)."""
    found = []
    for section, item, info in options:
        raw = getattr(args, _dest(section, item.name))
        if raw is None or raw is False:
            continue
        value = (not item.default) if declared_kind(item)[0] == "bool" else raw
        found.append((section, item.name, info, tuple(value) if isinstance(value, list) else value))
    return found
