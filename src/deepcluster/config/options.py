"""Declaring an option once: its default, help, command-line flag, checks and whether a resume may change it.

A settings section is a dataclass whose fields are made with `option(...)`; everything that needs to know about
an option (validation, the CLI's flags and help, `--resume`'s list of changeable options, YAML coercion) reads
these field metadata, so an option is written down in one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import Field, dataclass
from types import MappingProxyType
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
    text = "null" if value is None else str(shown) if info.flag else repr(shown)
    text = text if len(text) <= 80 else text[:77] + "..."
    if info.flag:
        return ConfigError(f"{info.flag} {text}: {problem} ({section}.{name})")
    return ConfigError(f"{section}.{name}={text}: {problem}")


def value_problem(item: Field[Any], info: OptionInfo, value: Any) -> str | None:
    """What is wrong with `value` for the option `item`: its own checks' verdict (which name the range), else
    the type its annotation declares (`type_problem`); None when it is valid."""
    wrong_type = type_problem(item.type, value)
    for check in info.checks:
        try:
            problem = check(value)
        except (TypeError, ValueError):  # a check meant for the declared type, given another one
            if wrong_type is None:
                raise
            return wrong_type
        if problem is not None:
            return problem
    return wrong_type


def check_section(section_name: str, section: Any) -> None:
    """Check every field's type and rules; raise ConfigError naming the first bad option, its value and the
    rule."""
    for item, info in section_options(section):
        value = getattr(section, item.name)
        problem = value_problem(item, info, value)
        if problem is not None:  # a bool's flag takes no value: name the option instead
            named = dataclasses.replace(info, flag=None) if declared_kind(item)[0] == "bool" else info
            raise option_error(section_name, item.name, named, value, problem)


def closest(name: Any, choices: Sequence[str]) -> str:
    """` (did you mean X?)` for the choice closest to `name`, or nothing when none is close."""
    found = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {found[0]}?)" if found else ""


# ------------------------------------------------------------------------------------------------ types
def declared_kind(declared: Field[Any] | Any) -> tuple[str, bool]:
    """(the declared type without None, whether None is allowed) of a field or its annotation: ("int", True) for
    `int | None`, ("tuple[float, float]", False), ("", ...) for a union of several types (annotations are text in
    modules with `from __future__ import annotations`). The one reader of annotations: checks, coercion and the
    command line's flag types all go through it."""
    declared = declared.type if isinstance(declared, Field) else declared
    text = declared if isinstance(declared, str) else str(declared)
    text = declared.__name__ if isinstance(declared, type) else text  # `int`, not "<class 'int'>"
    parts = [part.strip() for part in text.split("|")]
    kinds = [part for part in parts if part not in ("None", "NoneType")]
    return (kinds[0] if len(kinds) == 1 else "", len(kinds) < len(parts))


def _a_number(value: Any) -> str | None:
    if not _is_number(value):
        return "must be a number"
    return None if math.isfinite(value) else "must be a finite number"


_SCALARS: Mapping[str, Check] = MappingProxyType(
    {
        "int": lambda value: None if _is_int(value) else "must be a whole number",
        "float": _a_number,
        "str": lambda value: None if isinstance(value, str) else "must be a text" + _quote_hint(value),
        "bool": lambda value: None if isinstance(value, bool) else "must be true or false",
    }
)


def _quote_hint(value: Any) -> str:
    return f" (write '{value}' in quotes for a name)" if _is_number(value) or isinstance(value, bool) else ""


def _tuple_length(kind: str) -> int | None:
    """N of `tuple[float, ...]` with N floats, else None."""
    match = re.fullmatch(r"tuple\[(float(?:, float)*)\]", kind)
    return None if match is None else len(match.group(1).split(","))


def type_problem(declared: Any, value: Any) -> str | None:
    """What is wrong with the type of `value` for an option declared as `declared` (`int`, `float | None`,
    `str`, `bool`, `tuple[float, float]`, ...); None when it fits or the annotation is none of those."""
    kind, optional = declared_kind(declared)
    length = _tuple_length(kind)
    if kind not in _SCALARS and length is None:
        return None
    if length is None:
        problem = _SCALARS[kind](value)
    else:
        fits = isinstance(value, (list, tuple)) and len(value) == length and not any(map(_a_number, value))
        problem = None if fits else f"must be a list of {length} numbers"
    if value is None:
        return None if optional else f"{problem}, not null"
    return problem


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------------ checks
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
        problem = _a_number(value)
        if problem is not None:
            return problem
        if low is not None and not (value > low if above else value >= low):
            return f"must be {'>' if above else '>='} {low:g}"
        if high is not None and not value < high:
            return f"must be < {high:g}"
        return None

    return check


def fraction(value: Any) -> str | None:
    """A number in [0, 1]."""
    return None if _a_number(value) is None and 0.0 <= value <= 1.0 else "must be a number between 0 and 1"


def one_of(*choices: str) -> Check:
    """One of `choices`."""

    def check(value: Any) -> str | None:
        return None if value in choices else f"choose from {', '.join(choices)}"

    return check


def ordered_pair(upper: float | None = None) -> Check:
    """(low, high) with 0 < low <= high (<= `upper` when given)."""

    def check(value: Any) -> str | None:
        if type_problem("tuple[float, float]", value) is not None:
            return "must be a list of 2 numbers [low, high]"
        low, high = value
        if 0 < low <= high and (upper is None or high <= upper):
            return None
        return f"need 0 < low <= high{f' <= {upper:g}' if upper is not None else ''}"

    return check


# ------------------------------------------------------------------------------------------------ values
_NUMBER_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
"""A number as YAML 1.1 reads text: `1e-3` (no dot) is a string there, though meant as a number."""


def coerce(item: Field[Any], value: Any) -> Any:
    """A YAML/CLI value in the form the option `item` declares: a list of numbers as a tuple of floats, a
    number written `1e-3` (text to YAML) as a float for a float option. Anything else is left as it is, for
    `check_section` to refuse with the option's name."""
    kind, _ = declared_kind(item)
    if _tuple_length(kind) is not None and isinstance(value, (list, tuple)):
        return tuple(float(v) for v in value) if all(map(_is_number, value)) else value
    if kind == "float" and isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        return float(value)
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
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = " ".join(str(error).split())
            raise ConfigError(f"--set {item}: {value!r} is not a YAML value ({problem})") from None
        overrides.setdefault(section, {})[name] = parsed
    return overrides


def plain(value: Any) -> Any:
    """Nested mappings and sequences as dicts and lists (tuples become lists), ready for YAML."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
