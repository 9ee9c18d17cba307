"""``okcell run`` start-up as systemd sees it (real processes, real viky cameras, real model and recipe): a camera
that cannot be configured is a config error (exit 2, file and key named) found before the model is loaded, and a
good start logs which camera, backend, model, recipe and archive are in use."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from okcell.recipe import Recipe
from okcell.sidecar import load_verified
from service_support import ready_process, viky_camera, write_cell_config

OKCELL = str(Path(sys.executable).parent / "okcell")


def okcell_run(config: Path) -> subprocess.CompletedProcess[str]:
    """``okcell run`` for a start that must fail (bounded only as a hang guard)."""
    return subprocess.run([OKCELL, "run", "--config", str(config)], capture_output=True, text=True, timeout=600)


def test_missing_camera_index_is_a_config_error_naming_file_and_key(exported_model: Path, demo_recipe: Path,
                                                                    tmp_path: Path) -> None:
    camera = {**viky_camera("RGBa8"), "device": {"index": 5}}  # viky offers 3 cameras
    config = write_cell_config(tmp_path, exported_model, demo_recipe, {"camera": camera}, "software")
    done = okcell_run(config.path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{config.path}: camera.device.index 5: only 3 cameras found" in done.stderr


def test_bad_camera_feature_fails_before_the_model_is_loaded(model: Path, demo_recipe: Path, tmp_path: Path) -> None:
    """The model file is damaged too: loading it first would fail on its hash; checking the camera first names the
    camera feature and never gets to the model."""
    with model.open("ab") as onnx:
        onnx.write(b"damaged")
    camera = viky_camera("RGBa8")
    camera["features"][1] = {"Width": 5000}
    config = write_cell_config(tmp_path, model, demo_recipe, {"camera": camera}, "software")
    done = okcell_run(config.path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{config.path}: camera.features.Width: value 5000 outside the camera's range" in done.stderr
    assert "sidecar" not in done.stderr and "backend" not in done.stderr and str(model) not in done.stderr


def signal_another_thread(pid: int, signum: int) -> None:
    """Send ``signum`` to a thread of ``pid`` other than its main thread that does not block it: the kernel may hand
    a process's signal (systemd's SIGTERM) to any such thread."""
    import ctypes

    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        blocked = re.search(r"^SigBlk:\s*([0-9a-f]+)$", (task / "status").read_text(), re.MULTILINE)
        if int(task.name) != pid and blocked and not int(blocked.group(1), 16) & (1 << (signum - 1)):
            assert ctypes.CDLL(None, use_errno=True).tgkill(pid, int(task.name), signum) == 0
            return
    raise AssertionError(f"no thread of {pid} takes signal {signum}")


def test_start_up_log_names_camera_backend_model_recipe_and_archive(exported_model: Path, demo_recipe: Path,
                                                                    tmp_path: Path) -> None:
    """... and the cell stops on a SIGTERM that lands on a thread other than the main thread."""
    config = write_cell_config(tmp_path / "cell", exported_model, demo_recipe, {"camera": viky_camera("RGBa8")},
                               "software")
    with ready_process([OKCELL, "run", "--config", str(config.path)], tmp_path / "notify.sock") as (process, _):
        signal_another_thread(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    sidecar = load_verified(exported_model)
    recipe = Recipe.load(demo_recipe, sidecar, threads=1)
    expected = [
        r"genicam:serial_number=1: checked \(software trigger\)",
        r"backend onnxruntime: asked for",
        re.escape(f"model {exported_model}: sha256 {sidecar.sha256[:12]}…"),
        re.escape(f"recipe {demo_recipe.name} (id {recipe.recipe_id}): {demo_recipe}, "
                  f"threshold {recipe.threshold:.6g}"),
        re.escape(f"archive {config.archive.directory} (sync normal"),
        r"genicam:serial_number=1: acquiring \(software trigger\)",
        r"cell test-cell ready",
    ]
    lines = output.splitlines()
    positions = []
    for pattern in expected:
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert len(found) == 1, f"{pattern!r} logged {len(found)} times:\n{output}"
        positions.extend(found)
    assert positions == sorted(positions), f"start-up lines out of order (camera checked first):\n{output}"
