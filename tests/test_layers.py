"""Layers point one way (substrate <- harness <- entries <- site, CLI, Flower) and no module-level
import cycle exists in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import fedunlearn

PACKAGE = Path(fedunlearn.__file__).parent
ENTRY_FAMILIES = ("foundations", "perturbation", "decomposition", "incremental")
#: layer -> package prefixes it must not import (at module level or inside functions)
FORBIDDEN = {
    "fedunlearn.models": ("fedunlearn.data", "fedunlearn.federated", "fedunlearn.unlearning"),
    "fedunlearn.data": ("fedunlearn.models", "fedunlearn.unlearning", "fedunlearn.catalog"),
    "fedunlearn.federated": ("fedunlearn.unlearning", "fedunlearn.catalog", "fedunlearn.flower",
                             *(f"fedunlearn.{f}" for f in ENTRY_FAMILIES)),
    "fedunlearn.unlearning": ("fedunlearn.flower", "fedunlearn.cli", "fedunlearn.sitegen",
                              *(f"fedunlearn.{f}" for f in ENTRY_FAMILIES)),
    **{f"fedunlearn.{f}": ("fedunlearn.flower", "fedunlearn.cli", "fedunlearn.sitegen") for f in ENTRY_FAMILIES},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("fedunlearn")}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_layers_point_one_way():
    violations = []
    for name, path in sorted(MODULES.items()):
        for layer, forbidden in FORBIDDEN.items():
            if name == layer or name.startswith(layer + "."):
                for target in sorted(imports(path, top_level_only=False)):
                    if target.startswith(forbidden):
                        violations.append(f"{name} imports {target}")
    assert violations == []


def test_no_module_level_import_cycle():
    graph = {name: {t for t in imports(path, top_level_only=True) if t in MODULES and t != name}
             for name, path in MODULES.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # a package's __init__ importing nothing is not a cycle; report real ones only
    assert cycles == []
