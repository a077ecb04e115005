"""Declaring an option once: its default, help, command-line flag, checks and whether a resume may change it.

A settings section is a dataclass whose fields are made with `option(...)`; everything that needs to know about
an option (validation, the CLI's flags and help, `--resume`'s list of changeable options, YAML coercion) reads
these field metadata, so an option is written down in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import Field, dataclass
from typing import Any

import yaml


class ConfigError(ValueError):
    """An invalid setting: the message names the option and how to fix it."""


Check = Callable[[Any], str | None]
"""A check of one value: None when it is valid, else what is wrong ("must be > 0")."""


@dataclass(frozen=True)
class OptionInfo:
    """What `option` records about a field."""

    help: str
    flag: str | None = None
    """Command-line flag (`--k`); for a bool option the flag sets the opposite of the default."""
    metavar: str | None = None
    checks: tuple[Check, ...] = ()
    resumable: bool = False
    """A `--resume` may change it (the value is not part of what makes the run what it is)."""
    selects_method: str | None = None
    """Giving the flag also selects this method unless --method is given (e.g. --labels -> transfer)."""


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    check: Check | Sequence[Check] = (),
    resumable: bool = False,
    selects_method: str | None = None,
) -> Any:
    """A dataclass field with its documentation and rules (see `OptionInfo`)."""
    checks = (check,) if callable(check) else tuple(check)
    info = OptionInfo(help, flag, metavar, checks, resumable, selects_method)
    return dataclasses.field(default=default, metadata={"option": info})


def option_info(item: Field[Any]) -> OptionInfo:
    """The `OptionInfo` of a section field (a plain field gets one with no help)."""
    return item.metadata.get("option") or OptionInfo(help="")


def section_options(section: Any) -> Iterator[tuple[Field[Any], OptionInfo]]:
    """(field, info) of every option of a section dataclass (instance or class), in declaration order."""
    for item in dataclasses.fields(section):
        yield item, option_info(item)


def option_error(section: str, name: str, info: OptionInfo, value: Any, problem: str) -> ConfigError:
    """The error for a bad value: `--k 1: must be ... (cluster.k)` for a flagged option, else
    `optim.schedule='x': choose from ...`."""
    shown = list(value) if isinstance(value, tuple) else value
    if info.flag:
        return ConfigError(f"{info.flag} {shown}: {problem} ({section}.{name})")
    return ConfigError(f"{section}.{name}={shown!r}: {problem}")


def check_section(section_name: str, section: Any) -> None:
    """Run every field's checks; raise ConfigError naming the first bad option, its value and the rule."""
    for item, info in section_options(section):
        value = getattr(section, item.name)
        for check in info.checks:
            problem = check(value)
            if problem is not None:
                raise option_error(section_name, item.name, info, value, problem)


# ------------------------------------------------------------------------------------------------ checks
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def whole(minimum: int, optional: bool = False) -> Check:
    """A whole number >= `minimum` (None allowed when `optional`)."""

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        return None if _is_int(value) and value >= minimum else f"must be a whole number >= {minimum}"

    return check


positive = whole(1)
positive_or_none = whole(1, optional=True)


def number(
    low: float | None = None, *, above: bool = True, high: float | None = None, optional: bool = False
):
    """A number > `low` (>= when not `above`), and < `high` when given; None allowed when `optional`."""

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not _is_number(value):
            return "must be a number"
        if low is not None and not (value > low if above else value >= low):
            return f"must be {'>' if above else '>='} {low:g}"
        if high is not None and not value < high:
            return f"must be < {high:g}"
        return None

    return check


def fraction(value: Any) -> str | None:
    """A number in [0, 1]."""
    return None if _is_number(value) and 0.0 <= value <= 1.0 else "must lie between 0 and 1"


def one_of(*choices: str) -> Check:
    """One of `choices`."""

    def check(value: Any) -> str | None:
        return None if value in choices else f"choose from {', '.join(choices)}"

    return check


def ordered_pair(upper: float | None = None) -> Check:
    """(low, high) with 0 < low <= high (<= `upper` when given)."""

    def check(value: Any) -> str | None:
        low, high = value
        if 0 < low <= high and (upper is None or high <= upper):
            return None
        return f"need 0 < low <= high{f' <= {upper:g}' if upper is not None else ''}"

    return check


# ------------------------------------------------------------------------------------------------ values
def coerce(section: str, name: str, current: Any, value: Any) -> Any:
    """A YAML/CLI value in the form of the default it replaces (tuples from lists)."""
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(current):
            raise ConfigError(f"{section}.{name}: expected a list of {len(current)} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    return value


def parse_set(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`--set SECTION.OPTION=VALUE` items as nested overrides ({"optim": {"lr": 0.1}}), values read as YAML."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ConfigError(
                f"--set {item}: expected SECTION.OPTION=VALUE, e.g. --set optim.schedule=cosine"
            )
        overrides.setdefault(section, {})[name] = yaml.safe_load(value)
    return overrides


def plain(value: Any) -> Any:
    """Nested mappings and sequences as dicts and lists (tuples become lists), ready for YAML."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
