"""The package's layering contract: imports point down only, and no module or unit imports itself in a cycle.

Every import counts, also one inside a function: a function-level import that goes upward is still an
upward import. Layers, bottom first (a module may import its own layer or below):
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "segwise"

LAYERS = [
    {"constants", "errors"},
    {"io", "task", "config"},
    {"data", "folds"},
    {"models", "losses", "metrics", "calibration", "pretrained"},
    {"engine", "inference", "run"},
    {"evaluate", "report", "tune", "crossval"},
    {"cli", "demo", "serve", "__main__", "segwise"},
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}
__doc__ += "\n".join(f"    {i}  {', '.join(sorted(units))}" for i, units in reversed(list(enumerate(LAYERS))))


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules `name` imports anywhere in its body (module level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in MODULES:
                candidate = candidate.rsplit(".", 1)[0] if "." in candidate else ""
            if candidate and candidate != name and not name.startswith(candidate + "."):
                targets.add(candidate)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_every_unit_has_a_layer():
    assert {_unit(m) for m in MODULES} <= set(LEVEL), "add the new module or subpackage to LAYERS"


def test_imports_point_down_only():
    upward = [
        f"{module} (layer {LEVEL[_unit(module)]}) imports {target} (layer {LEVEL[_unit(target)]})"
        for module, targets in GRAPH.items()
        for target in targets
        if LEVEL[_unit(target)] > LEVEL[_unit(module)]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_modules():
    assert _cycles(GRAPH) == []


def test_no_import_cycle_between_units():
    units: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        units.setdefault(_unit(module), set()).update(_unit(t) for t in targets if _unit(t) != _unit(module))
    assert _cycles(units) == []


@pytest.mark.parametrize("module", ["constants"])
def test_bottom_modules_import_nothing_of_the_package(module):
    assert GRAPH[f"segwise.{module}"] == set()
