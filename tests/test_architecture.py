"""The package's floors: every module imports only from floors below its own (or from its own package), there
is no import circle, and files stay short. Imports are read from the source (inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import deepcluster

SRC = Path(deepcluster.__file__).parent
FLOORS: list[tuple[str, ...]] = [  # bottom up; a part may import only from the floors below its own
    ("config",),  # ground: settings (imports nothing of the package) ...
    ("storage", "seeding"),  # ... then the files of a run and the seeds
    ("data", "models", "cluster"),  # each knows nothing of the others
    ("methods",),
    ("engine",),
    ("evaluate", "use"),  # judging a run; using it (load, embed, assign, search, export)
    ("report",),
    ("api",),  # the public Python API
    ("cli", "__init__"),  # the command line and the package's own names
    ("entry",),  # the `deepcluster` command: stop signals while loading
    ("__main__",),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in SRC.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every deepcluster module `path` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("deepcluster"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deepcluster"):
            for alias in node.names:  # `from deepcluster import api` imports the module deepcluster.api
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found & set(modules)


def _part(module: str) -> str:
    """The top-level part of the package a module belongs to ("engine", "config", "api", "__init__", ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _floor(module: str) -> int:
    part = _part(module)
    for level, parts in enumerate(FLOORS):
        if part in parts:
            return level
    raise AssertionError(f"{module}: part {part!r} has no floor in FLOORS; give it one")


def test_every_import_runs_down_the_floors() -> None:
    modules = _modules()
    wrong = []
    for module, path in sorted(modules.items()):
        for target in sorted(_imports(path, modules)):
            same_part = _part(target) == _part(module)
            if not same_part and _floor(target) >= _floor(module):
                wrong.append(f"{module} (floor {_floor(module)}) imports {target} (floor {_floor(target)})")
    assert not wrong, "imports up or across the floors:\n" + "\n".join(wrong)


def test_there_is_no_import_circle() -> None:
    modules = _modules()
    graph = {module: _imports(path, modules) - {module} for module, path in modules.items()}
    for module in graph:  # a package's __init__ is imported first by its submodules: not an edge of theirs
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circle = path[path.index(target) :] + [target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_lower_floors_name_nothing_above_them() -> None:
    modules = _modules()
    for module, path in modules.items():
        targets = {_part(t) for t in _imports(path, modules)}
        if _part(module) == "engine":
            assert not targets & {"report", "evaluate"}, module
            assert "build_report" not in path.read_text(), module
        if _part(module) == "methods":
            assert "engine" not in targets, module
        if _part(module) == "cluster":
            assert not targets & {"models", "methods", "engine"}, module


def test_files_stay_short() -> None:
    lengths = {path: len(path.read_text().splitlines()) for path in SRC.rglob("*.py")}
    long = {str(p.relative_to(SRC)): n for p, n in lengths.items() if n > 350}
    assert not long, f"files over 350 lines: {long}"
    engine = {str(p.relative_to(SRC)): n for p, n in lengths.items() if p.parent.name == "engine" and n > 300}
    assert not engine, f"engine files over 300 lines: {engine}"
