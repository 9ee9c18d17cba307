"""Read okcell's import graph with ``ast`` and report imports that go against the layers, and import cycles.

Layers, lowest first: ``okcell`` (shared core) ← ``export`` (makes models) ← ``calibration`` (makes recipes) ←
``edge`` (runs cells). A module may import its own layer and the layers below it, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

LAYERS = ("okcell", "export", "calibration", "edge")
EDGE_LAYERS = (("acquisition", "backends"), ("runtime",), ("opcua",), ("bench", "cli"))
"""Inside ``edge``, lowest first: sources and backends, the runtime (service, inspector, config, archive), the OPC UA
adapter that drives the runtime, then the commands. ``edge``'s own ``__init__`` counts as lowest."""


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


def edge_layer_of(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "edge" or len(parts) < 2:
        return 0
    return next(rank for rank, names in enumerate(EDGE_LAYERS) if parts[1] in names)


def _edge_name(module: str) -> str:
    return "/".join(EDGE_LAYERS[edge_layer_of(module)])


def violations(root: Path) -> list[str]:
    """Upward imports across layers and import cycles, one readable line each (empty when the rules hold)."""
    graph = import_graph(root)
    found = [f"{a} imports {b}: {LAYERS[layer_of(a)]} may not import {LAYERS[layer_of(b)]} (a layer above it)"
             for a, b in graph.edges if layer_of(b) > layer_of(a)]
    found += [f"{a} imports {b}: edge.{_edge_name(a)} may not import edge.{_edge_name(b)} (a layer above it)"
              for a, b in graph.edges if layer_of(a) == layer_of(b) == LAYERS.index("edge")
              and edge_layer_of(b) > edge_layer_of(a)]
    found += ["import cycle: " + " -> ".join([*cycle, cycle[0]]) for cycle in nx.simple_cycles(graph)]
    return found


def draw(root: Path, out: Path) -> None:
    """Draw the package-level import graph, one row per layer (lowest at the bottom), to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def package(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 or (root / parts[0] / parts[-1]).is_dir() else parts[0]

    graph = nx.DiGraph()
    for a, b in import_graph(root).edges:
        if package(a) != package(b):
            graph.add_edge(package(a), package(b))
    rows: dict[int, list[str]] = {}
    for node in sorted(graph.nodes):
        rows.setdefault(layer_of(node), []).append(node)
    position = {node: ((i + 0.5) / len(nodes), layer) for layer, nodes in rows.items() for i, node in enumerate(nodes)}
    figure, axes = plt.subplots(figsize=(12, 7))
    nx.draw_networkx(graph, position, ax=axes, node_color=[f"C{layer_of(n)}" for n in graph.nodes], node_size=2600,
                     font_size=8, arrowsize=12, edge_color="0.6", connectionstyle="arc3,rad=0.08")
    for layer in rows:
        axes.text(-0.08, layer, LAYERS[layer], fontsize=12, weight="bold", va="center", ha="right")
    axes.set_title("okcell imports between packages: every arrow points to the same layer or one below it")
    axes.set_xlim(-0.2, 1.05)
    axes.axis("off")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


if __name__ == "__main__":
    import sys

    draw(Path(__file__).resolve().parents[1], Path(sys.argv[1]))
