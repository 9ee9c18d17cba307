"""sd_notify datagrams on real unix sockets, and the self-watchdog's stall detection."""

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from edge.runtime.sdnotify import SdNotifier, watchdog_interval_s
from edge.runtime.watchdog import CellWatchdog, StageHeartbeat


class NotifySocket:
    """A bound datagram socket standing in for systemd's notify socket (what systemd itself binds)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)

    def messages(self, wait_s: float = 0.0) -> list[str]:
        deadline = time.monotonic() + wait_s
        received = []
        while True:
            try:
                received.append(self.sock.recv(4096).decode())
            except socket.timeout:
                if time.monotonic() >= deadline:
                    return received


def test_no_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SdNotifier()
    assert not notifier.enabled and notifier.ready() is False and notifier.watchdog() is False


@pytest.mark.parametrize("abstract", [False, True])
def test_datagrams_reach_path_and_abstract_sockets(tmp_path: Path, monkeypatch, abstract):
    address = f"@okcell-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify.sock")
    listener = NotifySocket(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    notifier = SdNotifier()
    assert notifier.ready("warm") and notifier.watchdog() and notifier.status("line\nbreak") and notifier.stopping()
    assert listener.messages() == ["READY=1\nSTATUS=warm", "WATCHDOG=1", "STATUS=line break", "STOPPING=1"]
    notifier.close()


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_s() is None  # meant for another process
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval_s() is None


def test_health_is_checked_every_second_whatever_watchdog_usec(tmp_path: Path, monkeypatch):
    """A cell unhealthy for a moment (three quick archive failures) must feed systemd again within a second of
    recovering: with a check every WATCHDOG_USEC/2 (5 s for WatchdogSec=10) the gap could exceed WatchdogSec and
    systemd killed a cell that had already recovered (fault suite, disk full for 2 s)."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    def watchdog() -> CellWatchdog:
        return CellWatchdog(SdNotifier(), [], status=lambda: (True, "ok"), recover=lambda stage: False)

    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    assert watchdog().interval_s == 1.0
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    assert watchdog().interval_s == 0.5  # a shorter budget keeps half of it


def test_stalled_stage_stops_watchdog_and_is_named(tmp_path: Path):
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    heartbeat = StageHeartbeat("inference", budget_s=0.3)
    release = threading.Event()
    recoveries: list[str] = []

    def stage_work(stall: threading.Event) -> None:
        for _ in range(3):  # healthy work, then one item that hangs until released
            heartbeat.begin()
            time.sleep(0.02)
            heartbeat.end()
        heartbeat.begin()
        stall.wait()
        heartbeat.end()

    def recover(stage: str) -> bool:
        recoveries.append(stage)
        return True

    watchdog = CellWatchdog(SdNotifier(str(listener.address)), [heartbeat], lambda: (True, "cycle 3"), recover,
                            max_attempts=2, interval_s=0.1)
    watchdog.start()
    assert any(m.startswith("WATCHDOG=1") for m in listener.messages(wait_s=0.3))
    threading.Thread(target=stage_work, args=(release,), daemon=True).start()
    time.sleep(0.6)
    listener.messages()
    stalled = listener.messages(wait_s=0.6)
    assert stalled and not any("WATCHDOG=1" in m for m in stalled)
    assert all("stage inference stalled" in m for m in stalled), stalled
    time.sleep(0.4)
    assert recoveries == ["inference", "inference"] and watchdog.gave_up == "inference"
    release.set()  # even if the stage comes back, a watchdog that gave up never feeds systemd again
    time.sleep(0.3)
    listener.messages()
    after = listener.messages(wait_s=0.3)
    assert after and not any("WATCHDOG=1" in m for m in after) and "could not be recovered" in after[-1]
    watchdog.stop()


def test_unhealthy_status_withholds_watchdog(tmp_path: Path):
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    healthy = {"value": True}
    watchdog = CellWatchdog(SdNotifier(listener.address), [StageHeartbeat("acquisition", 1.0)],
                            lambda: (healthy["value"], "camera reconnecting"), lambda stage: True, interval_s=0.05)
    assert watchdog.check().healthy
    healthy["value"] = False
    assert not watchdog.check().healthy
    assert listener.messages() == ["WATCHDOG=1\nSTATUS=camera reconnecting", "STATUS=camera reconnecting"]


def test_notify_never_blocks_when_nobody_reads(tmp_path: Path):
    listener = NotifySocket(str(tmp_path / "notify.sock"))  # bound but never read: its queue fills up
    notifier = SdNotifier(listener.address)
    started = time.monotonic()
    sent = [notifier.status(f"cycle {i}") for i in range(200)]
    assert time.monotonic() - started < 5.0, "sd_notify blocked the caller"
    assert sent[0] and not all(sent)  # the first ones queued, the rest were dropped instead of blocking


def test_a_recovered_stage_is_reported_once_it_works_again(tmp_path: Path):
    """Recovery is the watchdog's finding (a restarted stage completed work), reported through ``recovered``;
    reading the status never changes the cell."""
    heartbeat = StageHeartbeat("outputs", budget_s=0.05)
    recovered: list[str] = []
    reads: list[int] = []

    def status() -> tuple[bool, str]:
        reads.append(1)
        return True, "cycle 9"

    watchdog = CellWatchdog(SdNotifier(str(tmp_path / "absent.sock")), [heartbeat], status, lambda stage: True,
                            recovered=lambda: recovered.append("cell"))
    for _ in range(2):  # the stage worked before it stalled
        heartbeat.begin()
        heartbeat.end()
    heartbeat.begin()
    time.sleep(0.1)
    assert not watchdog.check().healthy and watchdog.attempts == {"outputs": 1}
    assert recovered == []  # stalled, restarted, not yet working again
    heartbeat.busy_since = None  # the cell restarts the stage: idle, waiting for work (e.g. a slow inference)
    assert watchdog.check().healthy and recovered == [] and watchdog.attempts == {"outputs": 1}  # idle is not working
    heartbeat.begin()  # the restarted stage takes an item ...
    heartbeat.end()  # ... and finishes it
    assert watchdog.check().healthy
    assert recovered == ["cell"] and watchdog.attempts == {"outputs": 0}
    watchdog.check()
    assert recovered == ["cell"] and reads  # reported once; status was only read
