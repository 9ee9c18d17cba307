"""The systemd units verify with systemd-analyze and carry the settings the cell relies on."""

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
INSTALLED_OKCELL = "/opt/okcell/bin/okcell"


def unit_settings(name: str) -> dict[str, list[str]]:
    """KEY -> values (repeated keys such as DeviceAllow collected) of a unit file."""
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_passes(tmp_path: Path):
    """Verify copies whose ExecStart points at this checkout's okcell (verify checks the executable exists)."""
    okcell = Path(sys.executable).parent / "okcell"
    assert okcell.is_file(), "okcell console script not installed in this environment"
    copies = []
    for name in ("okcell.service", "okcell-engine.service"):
        text = (UNITS / name).read_text()
        assert INSTALLED_OKCELL in text
        copy = tmp_path / name
        copy.write_text(text.replace(INSTALLED_OKCELL, str(okcell)))
        copies.append(str(copy))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *copies], capture_output=True, text=True, timeout=60)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "okcell" not in report, f"systemd-analyze warned about the units:\n{report}"


def test_cell_unit_settings():
    s = unit_settings("okcell.service")
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{INSTALLED_OKCELL} run --config /etc/okcell/cell.yaml"]
    assert s["Restart"] == ["on-failure"] and int(s["WatchdogSec"][0]) > 0
    assert "StartLimitBurst" in s and "StartLimitIntervalSec" in s
    assert s["User"] == ["okcell"] and s["SupplementaryGroups"] == ["video"]
    assert s["ProtectSystem"] == ["strict"] and s["StateDirectory"] == ["okcell"] and s["LogsDirectory"] == ["okcell"]
    assert s["DevicePolicy"] == ["closed"]
    allowed = " ".join(s["DeviceAllow"])
    for device in ("char-nvidia-frontend", "char-nvidia-uvm", "/dev/nvmap", "char-usb_device"):
        assert device in allowed
    assert "okcell-engine.service" in s["After"][0] and "okcell-engine.service" in s["Wants"][0]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_engine_unit_is_a_oneshot_before_the_cell():
    s = unit_settings("okcell-engine.service")
    assert s["Type"] == ["oneshot"] and s["RemainAfterExit"] == ["yes"]
    assert s["Before"] == ["okcell.service"]
    assert s["ExecStart"][0].startswith(f"{INSTALLED_OKCELL} build-engine ")
    assert "ExecCondition" in s  # skipped unless the engine is missing or older than the ONNX / the install
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string((UNITS / "okcell-engine.service").read_text())
    assert parser.has_section("Install")


def test_engine_condition_runs_only_when_stale(tmp_path: Path):
    """The ExecCondition shell test, run against a temp models folder: build when missing or outdated."""
    condition = unit_settings("okcell-engine.service")["ExecCondition"][0]
    script = condition.split("-c ", 1)[1].strip("'")
    models = tmp_path / "models"
    models.mkdir()
    install = tmp_path / "okcell"
    install.write_text("")
    script = script.replace("/var/lib/okcell/models", str(models)).replace(INSTALLED_OKCELL, str(install))

    def needs_build() -> bool:
        return subprocess.run(["/bin/sh", "-c", script]).returncode == 0

    onnx, engine = models / "model.onnx", models / "model.engine"
    onnx.write_text("onnx")
    assert needs_build()  # first boot: no engine
    engine.write_text("engine")
    os.utime(install, (1_000_000, 1_000_000))
    os.utime(onnx, (1_000_000, 1_000_000))
    os.utime(engine, (2_000_000, 2_000_000))
    assert not needs_build()  # up to date
    os.utime(onnx, (3_000_000, 3_000_000))
    assert needs_build()  # the model was updated
    os.utime(onnx, (1_000_000, 1_000_000))
    os.utime(install, (3_000_000, 3_000_000))
    assert needs_build()  # okcell (and its TensorRT) was updated
