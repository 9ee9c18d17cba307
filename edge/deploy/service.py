"""Restarting the cell after a switch and waiting for ``READY=1``: the health gate of an install.

* :class:`SystemdService` (``--service systemd``, the default on a cell): ``systemctl reset-failed`` and
  ``restart --no-block okcell``, then poll ``systemctl show`` until a new invocation (``InvocationID``) is
  ``active`` — a ``Type=notify`` unit turns active only after ``READY=1`` — or ``failed``/``inactive``.
* :class:`TrialRun` (``--service trial``, machines without a service manager, and the tests): start
  ``okcell run --config CELL.yaml`` as a child with its own notify socket, read ``READY=1`` from it, then stop the
  child with SIGTERM (SIGKILL after ``stop_timeout_s``; a child that never got READY gets ``FAILED_GRACE_S``). The
  child gets SIGTERM too if the installer dies.
* :class:`NoService` (``--service none``, building an image): no restart and no READY gate, said in the output.

``okcell recipe push --activate`` asks the running cell to reload its recipe (SIGHUP) through a :class:`CellReloader`:
:class:`SystemdService` (``systemctl reload``, the unit's ``ExecReload=kill -HUP $MAINPID``) or :class:`SignalCell`
(SIGHUP to the process that last reported a recipe load: cells run without a service manager).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Protocol, Sequence

from edge.deploy.bundle import InstallError
from okcell.schema import ConfigError

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.2
FAILED_GRACE_S = 5.0  # a cell that never got ready has no triggers to finish: SIGKILL if SIGTERM is not enough


class ServiceManager(Protocol):
    name: str

    def check(self) -> None:
        """ConfigError if this service manager cannot work here (checked before anything is switched)."""

    def restart(self) -> None:
        """(Re)start the cell on the release ``current`` names now."""

    def wait_ready(self, timeout_s: float) -> str | None:
        """None once the cell sent READY=1, else why not (exited, failed, not within ``timeout_s``)."""


class CellReloader(Protocol):
    name: str

    def check(self) -> None:
        """ConfigError if this way of reaching the cell cannot work here (checked before anything is changed)."""

    def reload(self, pid: int | None) -> None:
        """Make the running cell reload its recipe; ``pid``: the process that last reported a load (or None).
        InstallError if the cell cannot be reached."""

    def running(self, pid: int | None) -> bool:
        """Whether the cell is still running (a reload it did not answer is then only late)."""


class NoService:
    name = "none"

    def check(self) -> None:
        pass

    def restart(self) -> None:
        pass

    def wait_ready(self, timeout_s: float) -> str | None:
        return None


class SystemdService:
    """The systemd unit of the cell."""

    name = "systemd"

    def __init__(self, unit: str = "okcell.service") -> None:
        self.unit = unit
        self._invocation = ""

    def _show(self) -> dict[str, str]:
        done = subprocess.run(["systemctl", "show", "-p", "InvocationID", "-p", "ActiveState", "-p", "SubState",
                               "-p", "Result", "-p", "LoadState", self.unit], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise InstallError(f"systemctl show {self.unit} failed: {done.stderr.strip()}")
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def check(self) -> None:
        if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
            raise ConfigError("--service systemd: systemd is not running on this machine; use --service trial "
                              "(start okcell run once and wait for READY=1) or none")
        if self._show().get("LoadState") == "not-found":
            raise ConfigError(f"--service systemd: unit {self.unit} not found (is the okcell package installed?)")

    def restart(self) -> None:
        self._invocation = self._show().get("InvocationID", "")
        # a release that failed to start a few times may have hit StartLimitBurst: that must not stop this start
        subprocess.run(["systemctl", "reset-failed", self.unit], capture_output=True, timeout=30)
        done = subprocess.run(["systemctl", "restart", "--no-block", self.unit], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise InstallError(f"systemctl restart {self.unit} failed: {done.stderr.strip()}")

    def reload(self, pid: int | None) -> None:
        done = subprocess.run(["systemctl", "reload", self.unit], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise InstallError(f"systemctl reload {self.unit} failed: {done.stderr.strip()}")

    def running(self, pid: int | None) -> bool:
        return self._show().get("ActiveState") in ("active", "reloading")

    def wait_ready(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self._show()
            started = state.get("InvocationID", "") not in ("", self._invocation)
            if started and state.get("ActiveState") == "active":
                return None
            if started and state.get("ActiveState") in ("failed", "inactive"):
                return (f"{self.unit} is {state.get('ActiveState')} (result {state.get('Result')}); "
                        f"see journalctl -u {self.unit}")
            if time.monotonic() > deadline:
                return (f"{self.unit} not READY within {timeout_s:g} s (ActiveState={state.get('ActiveState')}, "
                        f"SubState={state.get('SubState')}); see journalctl -u {self.unit}")
            time.sleep(_POLL_S)


class TrialRun:
    """Start ``okcell run`` once, wait for READY=1 on a notify socket of our own, stop it again."""

    name = "trial"

    def __init__(self, config: Path, state_dir: Path, command: Sequence[str] | None = None,
                 stop_timeout_s: float = 60.0) -> None:
        self.command = list(command or [sys.executable, "-m", "edge.cli.main", "run", "--config", str(config)])
        self.state_dir = state_dir  # $STATE_DIRECTORY, as okcell.service's StateDirectory= gives it
        self.stop_timeout_s = stop_timeout_s
        self._folder: Path | None = None
        self._socket: socket.socket | None = None
        self._child: subprocess.Popen[bytes] | None = None

    def restart(self) -> None:
        self._finish(self.stop_timeout_s)
        self._folder = Path(tempfile.mkdtemp(prefix="okcell-trial-"))
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.bind(str(self._folder / "notify"))
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
        env["NOTIFY_SOCKET"] = str(self._folder / "notify")
        env["STATE_DIRECTORY"] = str(self.state_dir)
        with open(self._folder / "output", "wb") as output:
            self._child = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                           stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def check(self) -> None:
        pass

    def wait_ready(self, timeout_s: float) -> str | None:
        assert self._socket is not None and self._child is not None, "restart() first"
        deadline = time.monotonic() + timeout_s
        reason = None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = f"`{' '.join(self.command)}` not READY within {timeout_s:g} s"
                    return reason
                self._socket.settimeout(min(_POLL_S, remaining))
                try:
                    message = self._socket.recv(4096).decode(errors="replace")
                except socket.timeout:
                    message = ""
                if "READY=1" in message.splitlines():
                    return None
                status = self._child.poll()
                if status is not None and not message:
                    reason = f"`{' '.join(self.command)}` exited with status {status} before READY=1: {self._output_tail()}"
                    return reason
        finally:
            self._finish(self.stop_timeout_s if reason is None else FAILED_GRACE_S)

    def _output_tail(self, lines: int = 5) -> str:
        assert self._folder is not None
        text = (self._folder / "output").read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def _finish(self, grace_s: float) -> None:
        """Stop the child (SIGTERM, SIGKILL after ``grace_s``) and remove the socket."""
        if self._child is not None:
            if self._child.poll() is None:
                self._child.send_signal(signal.SIGTERM)
                try:
                    self._child.wait(grace_s)
                except subprocess.TimeoutExpired:
                    self._child.kill()
                    self._child.wait()
            self._child = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


class SignalCell:
    """SIGHUP to the ``okcell run`` process that last reported a recipe load."""

    name = "signal"

    def check(self) -> None:
        pass

    def reload(self, pid: int | None) -> None:
        if pid is None:
            raise InstallError("no running cell found: none has reported a recipe load in its recipes folder yet "
                               "(is `okcell run` running with this cell.yaml?)")
        if not self.running(pid):
            raise InstallError(f"the cell process {pid} that last reported a recipe load is not running")
        os.kill(pid, signal.SIGHUP)

    def running(self, pid: int | None) -> bool:
        """``pid`` is alive and runs ``okcell run`` (not another process that got the id later)."""
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return pid is not None and b"run" in command and any(b"okcell" in part or b"edge.cli.main" in part
                                                             for part in command)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the installer dies (Linux prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
