"""The systemd units verify with systemd-analyze, carry the settings the cell relies on, score a low exposure in
``systemd-analyze security``, and the real ``okcell run`` works inside the unit's sandbox (as far as it can be
reproduced without systemd as PID 1: no capabilities, no new privileges, UMask, and every system call and socket
family it uses allowed by the unit's filters)."""

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
INSTALLED_OKCELL = "/opt/okcell/bin/okcell"
# okcell.service's overall exposure in `systemd-analyze security` (7.3 before the hardening, 1.6 after; docs/cell.md)
EXPOSURE_BOUND = 2.0
# CellService.shutdown() worst case, the sum of its bounded waits (see TimeoutStopSec in okcell.service)
SHUTDOWN_WORST_CASE_S = 5 + 30.3 + 5 + 30 + 9 + 30
needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed")


def unit_settings(name: str) -> dict[str, list[str]]:
    """KEY -> values (repeated keys such as DeviceAllow collected) of a unit file."""
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_copies(directory: Path) -> list[str]:
    """Copies of both units whose ExecStart points at this checkout's okcell (systemd-analyze checks that the
    executable exists)."""
    okcell = Path(sys.executable).parent / "okcell"
    assert okcell.is_file(), "okcell console script not installed in this environment"
    copies = []
    for name in ("okcell.service", "okcell-engine.service"):
        text = (UNITS / name).read_text()
        assert INSTALLED_OKCELL in text
        copy = directory / name
        copy.write_text(text.replace(INSTALLED_OKCELL, str(okcell)))
        copies.append(str(copy))
    return copies


@needs_systemd_analyze
def test_systemd_analyze_verify_passes(tmp_path: Path):
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *unit_copies(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "okcell" not in report, f"systemd-analyze warned about the units:\n{report}"


@needs_systemd_analyze
def test_cell_unit_exposure_is_low(tmp_path: Path):
    cell_unit = unit_copies(tmp_path)[0]
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--man=no", "--no-pager", cell_unit],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for okcell\.service: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= EXPOSURE_BOUND, done.stdout


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
    assert s["RestartPreventExitStatus"] == ["2"]  # a config error (exit 2) is not retried
    assert int(s["TimeoutStopSec"][0]) >= SHUTDOWN_WORST_CASE_S + 30


def test_cell_unit_hardening():
    s = unit_settings("okcell.service")
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    assert s["NoNewPrivileges"] == ["yes"] and s["UMask"] == ["0077"]
    assert s["SystemCallFilter"][0] == "@system-service" and s["SystemCallArchitectures"] == ["native"]
    for key in ("PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "ProtectClock", "ProtectHostname", "LockPersonality", "RestrictRealtime",
                "RestrictSUIDSGID", "RestrictNamespaces", "PrivateMounts", "RemoveIPC"):
        assert s[key] == ["yes"], key
    assert s["ProtectProc"] == ["invisible"]
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    allowed = {entry.split()[0] for entry in s["DeviceAllow"]}
    # dGPU: major 195 is "nvidia" (open kernel modules) or "nvidia-frontend" (proprietary) in /proc/devices
    assert {"char-nvidia", "char-nvidia-frontend", "char-nvidia-uvm", "/dev/nvmap", "char-usb_device"} <= allowed


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


def syscall_names(entry: str) -> set[str]:
    """The system calls of a SystemCallFilter= entry: a syscall name, or a @group with nested groups expanded."""
    if not entry.startswith("@"):
        return {entry}
    listing = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", entry], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= syscall_names(item)
    return names


def allowed_syscalls(filters: list[str]) -> set[str]:
    """What SystemCallFilter= lines allow: the allow-list entries minus the ``~`` deny entries."""
    allowed: set[str] = set()
    denied: set[str] = set()
    for line in filters:
        target = denied if line.startswith("~") else allowed
        for entry in line.lstrip("~").split():
            target |= syscall_names(entry)
    return allowed - denied


def sandbox_tools_missing() -> str | None:
    for tool in ("systemd-analyze", "strace", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if subprocess.run(["strace", "-f", "-o", os.devnull, "true"], capture_output=True).returncode != 0:
        return "strace cannot trace here (ptrace not permitted)"
    return None


@pytest.mark.skipif(sandbox_tools_missing() is not None, reason=str(sandbox_tools_missing()))
def test_okcell_run_inside_the_unit_sandbox(exported_model: Path, demo_recipe: Path, tmp_path: Path):
    """The real ``okcell run`` (viky camera, ONNX Runtime, OPC UA server, sd_notify) started as the unit starts it,
    as far as that can be done without systemd as PID 1: no capabilities (CapabilityBoundingSet=), no new
    privileges, UMask=0077. Traced while it starts, inspects three parts triggered by an OPC UA client and stops:
    every system call it makes passes the unit's SystemCallFilter= and every socket it opens is of a family in
    RestrictAddressFamilies=."""
    import asyncio
    import signal

    from asyncua import ua

    from opcua_support import PASSWORD_HASH, USER, EventCollector, free_port, session, subscribe_results
    from service_support import ready_process, viky_camera, write_cell_config

    settings = unit_settings("okcell.service")
    port = free_port()
    opcua = {"endpoint": f"opc.tcp://127.0.0.1:{port}/okcell", "security": ["None"],
             "users": [{"name": USER, "password_hash": PASSWORD_HASH}]}
    config = write_cell_config(tmp_path / "cell", exported_model, demo_recipe, {"camera": viky_camera("RGBa8")},
                               "software", opcua=opcua)
    trace = tmp_path / "okcell.strace"
    drop = ["--bounding-set=-all"] if os.geteuid() == 0 else []  # only root has capabilities to drop
    command = ["setpriv", "--no-new-privs", "--inh-caps=-all", *drop, "--",
               "strace", "-f", "-qq", "-o", str(trace), str(Path(sys.executable).parent / "okcell"),
               "run", "--config", str(config.path)]
    with ready_process(command, tmp_path / "notify.sock", env={"WATCHDOG_USEC": "2000000"}, umask=0o077) as (tracer, _):

        async def three_parts() -> list[int]:
            async with session(f"opc.tcp://127.0.0.1:{port}/okcell") as (client, cell, idx):
                collector = EventCollector()
                await subscribe_results(client, idx, collector)
                trigger = ua.QualifiedName("Trigger", idx)
                ids = [await cell.call_method(trigger, ua.Variant(f"part-{n}")) for n in range(3)]
                await collector.wait_for(3, timeout_s=300)
                assert sorted(event.ResultId for event in collector.events) == ids
                return ids

        asyncio.run(three_parts())
        okcell_pid = int((Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read_text().split() or ["0"])[0])
        assert okcell_pid, "okcell is not running under strace"
        os.kill(okcell_pid, signal.SIGTERM)
        output, _ = tracer.communicate(timeout=300)
    assert tracer.returncode == 0, output

    calls, families = set(), set()
    for line in trace.read_text().splitlines():
        call = re.match(r"\d+\s+(\w+)\(", line)
        if call:
            calls.add(call.group(1))
        family = re.match(r"\d+\s+socket(?:pair)?\((AF_\w+)", line)
        if family:
            families.add(family.group(1))
    assert {"execve", "ioctl", "socket", "sendmsg"} <= calls or {"execve", "ioctl", "socket", "sendto"} <= calls
    if os.geteuid() == 0:
        calls.discard("fchown")  # SQLite hands the files it creates to the database's owner only when run as root
    assert not calls - allowed_syscalls(settings["SystemCallFilter"]), "system calls the unit would refuse"
    assert families and families <= set(settings["RestrictAddressFamilies"][0].split()), families
    database = config.archive.directory / "results.sqlite"
    assert database.is_file() and database.stat().st_mode & 0o077 == 0  # UMask=0077
