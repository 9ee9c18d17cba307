"""Dependencies point down (okcell ← export ← calibration ← edge) and no modules import each other in a cycle."""

from __future__ import annotations

from pathlib import Path

from layering import LAYERS, import_graph, violations

ROOT = Path(__file__).resolve().parents[1]


def test_the_checkout_keeps_the_layers_and_has_no_import_cycles():
    assert violations(ROOT) == []
    assert import_graph(ROOT).number_of_edges() > 100  # the graph is really read, not empty


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_an_upward_import_is_reported_even_inside_a_function(tmp_path):
    root = _tree(tmp_path, {
        "okcell/images.py": "def read():\n    from edge.service import run\n",
        "edge/service.py": "def run():\n    pass\n",
    })
    assert violations(root) == ["okcell.images imports edge.service: okcell may not import edge (a layer above it)"]


def test_modules_that_import_each_other_are_reported(tmp_path):
    root = _tree(tmp_path, {
        "export/parity.py": "from export import onnx_export\n",
        "export/onnx_export.py": "from .parity import check\n",
    })
    [found] = violations(root)
    assert found.startswith("import cycle: ") and set(found.split(": ")[1].split(" -> ")) == {
        "export.parity", "export.onnx_export"}


def test_relative_imports_resolve_to_the_module_they_name(tmp_path):
    root = _tree(tmp_path, {
        "calibration/build.py": "from ..edge import cli\n",
        "edge/cli.py": "",
    })
    assert set(import_graph(root).edges) == {("calibration.build", "edge"), ("calibration.build", "edge.cli")}
    assert len(violations(root)) == 2


def test_inside_edge_the_runtime_may_not_import_the_opcua_adapter(tmp_path):
    root = _tree(tmp_path, {})
    for sub in ("runtime", "opcua", "cli"):
        (root / "edge" / sub).mkdir()
    (root / "edge" / "runtime" / "control.py").write_text("")
    (root / "edge" / "runtime" / "service.py").write_text("from edge.opcua.server import serve\n")
    (root / "edge" / "opcua" / "server.py").write_text("from edge.runtime.control import Control\n")
    (root / "edge" / "cli" / "run.py").write_text("from edge.opcua import server\nfrom edge.runtime import service\n")
    assert violations(root) == [
        "edge.runtime.service imports edge.opcua.server: edge.runtime may not import edge.opcua (a layer above it)"]
