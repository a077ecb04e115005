"""A whole run's settings: the core sections plus the sections of the methods, YAML in and out, presets.

`TrainConfig` holds the core sections as fields and each method's section (declared beside the method, e.g.
`sela`) in `sections`, reachable as an attribute (`config.sela.heads`). Which method sections exist is given
by whoever creates a config (`deepcluster.methods.METHODS` does it for the registered methods); once created,
a config carries them, so overrides, validation and YAML need no other knowledge.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import yaml

from deepcluster.config.options import ConfigError, check_section, closest, coerce, option_info, plain
from deepcluster.config.sections import (
    CORE_SECTIONS,
    AugmentConfig,
    ClusterConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
)

PRESETS: dict[str, dict[str, Any]] = {
    # For small data within minutes on a CPU: crops down to 20% of the image, colour jitter, over-clustering at
    # ~10x the expected classes, batch 128 with cosine decay, 4 epochs (about 6 minutes for the embedded 10,000
    # images on 2 cores; see benchmarks/learns.py). The dataclass defaults are this preset.
    "default": {},
    # A plain reading of Caron et al. (2018): crop and flip only, constant lr 0.05, RandomResizedCrop's
    # default scale range, k = 10,000 (lower it with --k on small data).
    "paper": {  # for --method deepcluster, which it implies when no method is named
        "augment": {"crop_scale": [0.08, 1.0], "color_jitter": 0.0, "grayscale_prob": 0.0},
        "model": {"first_conv": "random"},
        "cluster": {"k": 10000},
        "optim": {"lr": 0.05, "schedule": "constant", "batch_size": 256},
        "run": {"epochs": 500},
    },
}


PRESET_METHODS: dict[str, str] = {"paper": "deepcluster"}
"""The method a preset is written for, chosen when the preset is named without a method."""


def preset_method(preset: str, method: str | None) -> str:
    """The method a config of `preset` runs: `method` if named, else the preset's own, else the default."""
    if method is not None and not isinstance(method, str):
        raise ConfigError(f"--method {method!r}: must be a method's name (text)")
    if not isinstance(preset, str):
        raise ConfigError(f"--preset {preset!r}: unknown preset; choose from {', '.join(PRESETS)}")
    return method or PRESET_METHODS.get(preset, DEFAULT_METHOD)


DEFAULT_METHOD = "deepcluster-v2"
"""What `deepcluster train` runs when no method is named: what learns most on the embedded split within the main
job's budget (benchmarks/learns.py); `--method deepcluster` is the 2018 method."""


@dataclass
class TrainConfig:
    """A whole run's settings."""

    method: str = DEFAULT_METHOD
    preset: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sections: dict[str, Any] = field(default_factory=dict)
    """The methods' own sections by name (e.g. "sela": SelaConfig(...)), also reachable as attributes."""

    def __getattr__(self, name: str) -> Any:  # only called when normal lookup fails: a method's section
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"TrainConfig has no section or attribute {name!r}")

    def section(self, name: str) -> Any:
        """The core or method section called `name`."""
        return getattr(self, name) if name in CORE_SECTIONS else self.sections[name]

    def section_names(self) -> list[str]:
        """Every section of this config: the core ones, then the methods'."""
        return [*CORE_SECTIONS, *self.sections]

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), ready for YAML: method and preset, then every section."""
        raw: dict[str, Any] = {"method": self.method, "preset": self.preset}
        for name in self.section_names():
            raw[name] = dataclasses.asdict(self.section(name))
        return plain(raw)

    def validate(self) -> None:
        """Check every option of every section that can be checked without the data; raise ConfigError naming
        the first bad one."""
        for name in self.section_names():
            section = self.section(name)
            check_section(name, section)
            rule = getattr(section, "check", None)
            if rule is not None:
                rule(self)


def apply_overrides(config: TrainConfig, overrides: Mapping[str, Any], origin: str = "config") -> TrainConfig:
    """A copy of `config` with nested `overrides` ({"optim": {"lr": 0.1}, "method": ...}) applied.

    Unknown sections or options raise ConfigError naming them and where they came from.
    """
    new = dataclasses.replace(config, sections=dict(config.sections))
    for key, value in overrides.items():
        if key in ("method", "preset"):
            if not isinstance(value, str):
                raise ConfigError(f"{origin}: {key} must be a name (text), got {value!r}")
            setattr(new, key, value)
            continue
        if key not in new.section_names():
            known = ["method", "preset", *new.section_names()]
            raise ConfigError(
                f"{origin}: unknown section {key!r}{closest(key, known)}; known sections: {', '.join(known)}"
            )
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{origin}: section {key!r} must be a mapping of options (e.g. {key}: {{option: value}}), "
                f"got {value!r}"
            )
        section = dataclasses.replace(new.section(key))
        valid = {f.name: f for f in fields(section)}
        for name, item in value.items():
            if name not in valid:
                raise ConfigError(f"{origin}: {_unknown_option(new, key, name)}")
            setattr(section, name, coerce(valid[name], item))
        if key in CORE_SECTIONS:
            setattr(new, key, section)
        else:
            new.sections[key] = section
    return new


def _unknown_option(config: TrainConfig, section: str, name: Any) -> str:
    """The message for `section.name`, an option `section` does not have: the closest name, or the section
    that has it, then the section's options."""
    valid = sorted(f.name for f in fields(config.section(section)))
    hint = closest(name, valid)
    owners = [
        other for other in config.section_names() if name in {f.name for f in fields(config.section(other))}
    ]
    if not hint and owners:
        hint = f" (it is an option of {', '.join(owners)}: {owners[0]}.{name})"
    return f"unknown option {section}.{name}{hint}; options of {section}: {', '.join(valid)}"


class MethodCatalog(Protocol):
    """What building a config needs to know of the methods (`deepcluster.methods.METHODS` is one)."""

    @property
    def sections(self) -> Mapping[str, type]:
        """Each method's settings section (a dataclass) by section name."""
        ...

    def defaults_of(self, method: str) -> Mapping[str, Any]:
        """The settings `method` starts from ({section: {option: value}}), over the core defaults."""
        ...


def preset_config(
    name: str = "default", method: str | None = None, methods: MethodCatalog | None = None
) -> TrainConfig:
    """The configuration of a named preset (`default` or `paper`) for `method` (default: the preset's, else the
    default method), with a default section for each of the `methods`, whose own starting settings
    (`MethodCatalog.defaults_of`) apply over the core defaults and under the preset's."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(
            f"--preset {name}: unknown preset{closest(name, list(PRESETS))}; choose from {', '.join(PRESETS)}"
        )
    sections = methods.sections if methods is not None else {}
    base = TrainConfig(sections={key: kind() for key, kind in sections.items()})
    base.method = preset_method(name, method)
    defaults = methods.defaults_of(base.method) if methods is not None else {}
    base = apply_overrides(base, defaults, origin=f"defaults of --method {base.method}")
    config = apply_overrides(base, PRESETS[name], origin=f"preset {name}")
    config.preset = name
    return config


def config_from_dict(
    raw: Mapping[str, Any], methods: MethodCatalog | None = None, origin: str = "config"
) -> TrainConfig:
    """A config from nested settings ({"preset": ..., "method": ..., "optim": {"lr": 0.1}, ...}): its preset for
    its method (`preset_config`), then the rest; unknown sections and options are refused, naming `origin`.

    Without `methods` (the floors below the methods, reading a run's data and model settings), the sections of
    methods are skipped instead."""
    config = preset_config(raw.get("preset", "default"), raw.get("method"), methods)
    if methods is None:
        known = {"method", "preset", *config.section_names()}
        raw = {key: value for key, value in raw.items() if key in known}
    return apply_overrides(config, raw, origin=origin)


def resumable_options(section: type) -> list[str]:
    """The options of a settings section that a resume may change."""
    return [item.name for item in fields(section) if option_info(item).resumable]


def setting_differences(before: TrainConfig, now: TrainConfig) -> list[str]:
    """`section.option: before -> now` for every setting that differs, apart from those a resume may change
    and `run.out` (empty: the same run's settings)."""
    old, new = before.to_dict(), now.to_dict()
    differences = [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in ("method", "preset")
        if old.get(key) != new.get(key)
    ]
    for name in sorted(set(old) | set(new) - {"method", "preset"}):
        if name in ("method", "preset"):
            continue
        kind = type(now.section(name)) if name in new else type(before.section(name))
        free = {*resumable_options(kind), *(["out"] if name == "run" else [])}
        a, b = old.get(name) or {}, new.get(name) or {}
        for key in sorted(set(a) | set(b)):
            if key not in free and a.get(key) != b.get(key):
                differences.append(f"{name}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return differences


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a YAML settings file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"--config {path}: {'is a folder, not a file' if path.is_dir() else 'file not found'}"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--config {path}: cannot be read as text ({error})") from error
    except yaml.YAMLError as error:
        problem = " ".join(str(error).split())
        raise ConfigError(f"--config {path}: not valid YAML ({problem})") from error
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"--config {path}: expected a mapping of sections at the top level (e.g. optim: {{lr: 0.1}}), "
            f"got {type(raw).__name__} {raw!r}"
        )
    return dict(raw)


def load_config(path: str | os.PathLike[str], methods: MethodCatalog | None = None) -> TrainConfig:
    """A YAML settings file (a run's config.yaml reproduces the run); `methods` as in `config_from_dict`."""
    return config_from_dict(read_yaml(path), methods, origin=f"--config {path}")


def dump_config(config: TrainConfig) -> str:
    """YAML text of every setting."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
