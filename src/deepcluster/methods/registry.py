"""The methods a run can use, by name: their settings sections and starting settings (what building a config
needs: `deepcluster.config.MethodCatalog`), the CLI's choices and help.

A new method is one file (its `Method` subclass, with its settings section as `Config`) plus one line in
`deepcluster/methods/__init__.py`; a program of its own can add one with `METHODS.register(MyMethod)` (or, for a
while, `with METHODS.registered(MyMethod): ...`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from deepcluster.config import ConfigError, TrainConfig
from deepcluster.config.options import closest
from deepcluster.methods.base import Method


class MethodRegistry:
    """Method classes by their `name`."""

    def __init__(self, methods: Iterable[type[Method]] = ()) -> None:
        self._methods: dict[str, type[Method]] = {}
        for method in methods:
            self.register(method)

    # ------------------------------------------------------------ membership
    def register(self, method: type[Method]) -> type[Method]:
        """Add `method` (usable as a class decorator); its name must be new and must not be a core section's."""
        name = getattr(method, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{method.__name__}: a method needs a class attribute `name`")
        if name in self._methods:
            raise ValueError(
                f"a method called {name!r} is registered already ({self._methods[name].__name__})"
            )
        if method.Config is not None and method.section() in TrainConfig().section_names():
            raise ValueError(
                f"method {name!r}: its settings section would hide the core section {method.section()!r}"
            )
        self._methods[name] = method
        return method

    def unregister(self, name: str) -> None:
        """Remove the method called `name`."""
        self._methods.pop(name, None)

    @contextlib.contextmanager
    def registered(self, method: type[Method]) -> Iterator[type[Method]]:
        """`method` registered for the duration of a `with` block."""
        self.register(method)
        try:
            yield method
        finally:
            self.unregister(method.name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._methods)

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __getitem__(self, name: str) -> type[Method]:
        if not isinstance(name, str) or name not in self._methods:
            raise ConfigError(
                f"--method {name}: unknown method{closest(name, self.names)}; choose from {', '.join(self._methods)}"
            )
        return self._methods[name]

    def __iter__(self) -> Iterator[type[Method]]:
        return iter(self._methods.values())

    @property
    def sections(self) -> dict[str, type]:
        """Settings sections of the registered methods, by section name (the method's, `-` as `_`)."""
        return {m.section(): m.Config for m in self._methods.values() if m.Config is not None}

    # ------------------------------------------------------------ what configs need of the methods
    def defaults_of(self, method: str) -> Mapping[str, Any]:
        """The settings `method` starts from (`Method.defaults`); none for a name not registered here."""
        return self._methods[method].defaults if method in self._methods else {}

    def complete(self, config: TrainConfig) -> TrainConfig:
        """`config` with a default section for every registered method it lacks (e.g. made before one was
        registered, or as a bare `TrainConfig()`)."""
        missing = {name: kind() for name, kind in self.sections.items() if name not in config.sections}
        if not missing:
            return config
        return TrainConfig(**{**vars(config), "sections": {**config.sections, **missing}})

    def build(self, config: TrainConfig, device: torch.device | None = None) -> Method:
        """The method `config.method` for this (validated) config, computing on `device`."""
        return self[config.method](config, device)
