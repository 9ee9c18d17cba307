"""Read okcell's import graph with ``ast`` and report imports that go against the layers, and import cycles.

Layers, lowest first: ``okcell`` (shared core) ← ``export`` (makes models) ← ``calibration`` (makes recipes) ←
``edge`` (runs cells). A module may import its own layer and the layers below it, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

LAYERS = ("okcell", "export", "calibration", "edge")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module named by an import statement anywhere in the file (function-level imports too)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path) -> nx.DiGraph:
    """Module → module edges between okcell's own modules (an import of a package's name points at the package)."""
    files = {module_name(root, path): path for layer in LAYERS for path in sorted((root / layer).rglob("*.py"))}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for module, path in files.items():
        targets = imported_modules(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py")
        for target in targets:
            if target in files and target != module:
                graph.add_edge(module, target)
    return graph


def layer_of(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def violations(root: Path) -> list[str]:
    """Upward imports across layers and import cycles, one readable line each (empty when the rules hold)."""
    graph = import_graph(root)
    found = [f"{a} imports {b}: {LAYERS[layer_of(a)]} may not import {LAYERS[layer_of(b)]} (a layer above it)"
             for a, b in graph.edges if layer_of(b) > layer_of(a)]
    found += ["import cycle: " + " -> ".join([*cycle, cycle[0]]) for cycle in nx.simple_cycles(graph)]
    return found
