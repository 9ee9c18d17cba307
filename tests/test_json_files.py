"""Every JSON/YAML file okcell reads fails with a ConfigError naming the file, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.runtime.cell_config import load_cell_config
from export.engine_sidecar import EngineSidecar
from okcell.schema import ConfigError, read_json, read_yaml
from okcell.sidecar import ModelSidecar

NOT_UTF8 = b'{"onnx_file": "\xff\xfe"}'


@pytest.mark.parametrize("load", [ModelSidecar.load, EngineSidecar.load, load_cell_config])
def test_a_file_that_is_not_utf8_is_a_config_error_naming_it(load, tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(ConfigError, match=rf"{path}: not UTF-8 text"):
        load(path)


def test_read_json_names_the_file_for_each_fault(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    with pytest.raises(ConfigError, match=rf"{missing}: not found$"):
        read_json(missing)
    with pytest.raises(ConfigError, match=rf"{missing}: model sidecar not found \(make it with X\)"):
        read_json(missing, missing="model sidecar not found (make it with X)")
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": ')
    with pytest.raises(ConfigError, match=rf"{broken}: not valid JSON"):
        read_json(broken)
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(ConfigError, match=rf"{folder}: cannot read"):
        read_json(folder)
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}')
    assert read_json(good) == {"a": [1, 2]}


def test_read_yaml_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "cell.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{broken}: not valid YAML"):
        read_yaml(broken)
    broken.write_text("a: 1\n")
    assert read_yaml(broken) == {"a": 1}
