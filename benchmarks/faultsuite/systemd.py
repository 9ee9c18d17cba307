"""systemd's part: run ``okcell run`` as the ``Type=notify`` unit with a watchdog, restart it on failure, watch its
memory.

It does what ``systemd/okcell.service`` asks of systemd, with shorter times (:class:`UnitTimes`): the child gets
``NOTIFY_SOCKET`` (a datagram socket read here, the protocol of ``edge.runtime.sdnotify``) and ``WATCHDOG_USEC``;
it has started when ``READY=1`` arrives (else it is killed after ``TimeoutStartSec``). After READY, no
``WATCHDOG=1`` for ``WatchdogSec`` is a hang: SIGABRT, and SIGKILL after ``TimeoutAbortSec`` (a stopped process never
acts on the SIGABRT). Any end but the final stop is restarted after ``RestartSec`` (``Restart=on-failure``), except
an exit status the unit lists in ``RestartPreventExitStatus=``: then the unit stays failed until the operator
restarts it (:meth:`Supervisor.start_if_failed`)."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from okcell.memory import rss_mb

COUNTS = re.compile(r"OK (\d+) NOK (\d+) ERROR (\d+)")
ERROR_LINE = "okcell run: error:"


@dataclass(frozen=True)
class UnitTimes:
    """The unit's times in seconds (systemd's names)."""

    watchdog_s: float = 10.0  # WatchdogSec
    start_timeout_s: float = 300.0  # TimeoutStartSec
    abort_timeout_s: float = 5.0  # TimeoutAbortSec: SIGABRT -> SIGKILL
    stop_timeout_s: float = 60.0  # TimeoutStopSec
    restart_s: float = 1.0  # RestartSec


def restart_prevent_exit_status(unit: Path) -> frozenset[int]:
    """The exit statuses ``unit`` lists in ``RestartPreventExitStatus=`` (none if it has no such line)."""
    statuses: set[int] = set()
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "RestartPreventExitStatus":
            statuses.update(int(word) for word in value.split() if word.isdigit())
    return frozenset(statuses)


@dataclass
class Lifetime:
    """One process of the unit, from its start to its end."""

    number: int
    pid: int
    started: float  # time.monotonic()
    ready: float | None = None
    ended: float | None = None
    end: str = ""  # how it ended: "exit 0", "exit 2", "SIGKILL", "watchdog timeout", "start timeout"
    fault: str = ""  # the fault being injected when it ended ("" for none)
    error_line: str = ""  # its last "okcell run: error:" line
    status: str = ""  # its last STATUS= text
    results: int = 0  # OK + NOK + ERROR results it reported in STATUS=
    rss: list[tuple[int, float]] = field(default_factory=list)  # (results, RSS MiB), sampled every second after READY


class Supervisor:
    """Runs ``command`` as the unit does (see module docstring), in a thread, until :meth:`stop`."""

    def __init__(self, command: list[str], env: dict[str, str], work: Path, times: UnitTimes,
                 prevent_restart: frozenset[int], log: TextIO) -> None:
        self.command, self.times, self.prevent_restart, self.log = command, times, prevent_restart, log
        self.env = {**env, "NOTIFY_SOCKET": str(work / "notify.sock"),
                    "WATCHDOG_USEC": str(int(times.watchdog_s * 1e6))}
        self.lifetimes: list[Lifetime] = []
        self.fault = ""  # set by the injector while it injects a fault
        self.lines: deque[str] = deque(maxlen=2000)  # recent output lines of every lifetime
        self.line_count = 0
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.env["NOTIFY_SOCKET"])
        self._socket.setblocking(False)
        self._process: subprocess.Popen[str] | None = None
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._start_requested = threading.Event()
        self._thread = threading.Thread(target=self._run, name="systemd", daemon=True)

    # ---- the operator's and the fault injector's side --------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def current(self) -> Lifetime | None:
        return self.lifetimes[-1] if self.lifetimes else None

    def signal(self, signum: int) -> Lifetime:
        """Send ``signum`` to the running main process; returns its lifetime."""
        life, process = self.current, self._process
        assert life is not None and process is not None and process.poll() is None, "no cell process is running"
        os.kill(life.pid, signum)
        return life

    def wait_ready(self, after: int, timeout_s: float) -> Lifetime:
        """The first lifetime numbered above ``after`` once it sent READY=1 (TimeoutError after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                life = self.current
                if life is not None and life.number > after and life.ready is not None and life.ended is None:
                    return life
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no cell process became ready within {timeout_s:.0f} s")
                self._changed.wait(min(left, 0.5))

    def wait_end(self, after: int, timeout_s: float, end: str | None = None) -> Lifetime:
        """The first lifetime numbered above ``after`` that ended (with ``end``, if given)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for life in self.lifetimes:
                    if life.number > after and life.ended is not None and (end is None or life.end == end):
                        return life
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no cell process ended{f' with {end}' if end else ''} within {timeout_s:.0f} s")
                self._changed.wait(min(left, 0.5))

    def start_if_failed(self) -> None:
        """``systemctl restart`` after a failure the unit does not restart by itself (no effect otherwise)."""
        self._start_requested.set()

    def find_line(self, pattern: str, since: int) -> str | None:
        """The first output line after line number ``since`` that contains ``pattern``, if there is one yet."""
        with self._changed:
            lines = list(self.lines)
            first = self.line_count - len(lines)
        return next((line for number, line in enumerate(lines, start=first) if number >= since and pattern in line),
                    None)

    def wait_line(self, pattern: str, since: int, timeout_s: float) -> str:
        """:meth:`find_line`, waiting for it up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (line := self.find_line(pattern, since)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no line with {pattern!r} within {timeout_s:.0f} s")
            time.sleep(0.1)
        return line

    def stop(self) -> Lifetime | None:
        """``systemctl stop``: SIGTERM, SIGKILL after TimeoutStopSec; returns the last lifetime."""
        self._stopping.set()  # the watching thread sends the SIGTERM
        self._start_requested.set()
        self._thread.join()
        self._socket.close()
        os.unlink(self.env["NOTIFY_SOCKET"])
        return self.current

    # ---- systemd's side ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            life = self._spawn()
            self._watch(life)
            if self._stopping.is_set():
                return
            if life.end.startswith("exit ") and int(life.end.split()[1]) in self.prevent_restart:
                self._start_requested.wait()  # the unit failed; the operator restarts it
            else:
                self._stopping.wait(self.times.restart_s)
            self._start_requested.clear()

    def _spawn(self) -> Lifetime:
        self._drain()  # datagrams of the previous process
        process = subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True, preexec_fn=_no_core_dumps)
        life = Lifetime(len(self.lifetimes) + 1, process.pid, time.monotonic())
        with self._changed:
            self._process = process
            self.lifetimes.append(life)
            self._changed.notify_all()
        threading.Thread(target=self._read_output, args=(process, life), daemon=True).start()
        return life

    def _watch(self, life: Lifetime) -> None:
        """Until the process is gone: READY, watchdog, STATUS, memory; kill it on a start timeout or a hang."""
        process = self._process
        assert process is not None
        last_ping = life.started
        next_sample = 0.0
        while process.poll() is None:
            now = time.monotonic()
            for message in self._drain():
                last_ping = self._note(life, message, now, last_ping)
            if self._stopping.is_set():
                self._end(life, process, signal.SIGTERM, self.times.stop_timeout_s, "")
                break
            if life.ready is None and now - life.started > self.times.start_timeout_s:
                self._end(life, process, signal.SIGTERM, self.times.stop_timeout_s, "start timeout")
                break
            if life.ready is not None and now - last_ping > self.times.watchdog_s:
                self._end(life, process, signal.SIGABRT, self.times.abort_timeout_s, "watchdog timeout")
                break
            if life.ready is not None and now >= next_sample:
                try:
                    life.rss.append((life.results, rss_mb(life.pid)))
                except RuntimeError:
                    pass  # it just ended
                next_sample = now + 1.0
            time.sleep(0.05)
        code = process.wait()
        with self._changed:
            life.ended = time.monotonic()
            if not life.end:
                life.end = f"exit {code}" if code >= 0 else signal.Signals(-code).name
            life.fault = self.fault
            self._changed.notify_all()

    def _note(self, life: Lifetime, message: str, now: float, last_ping: float) -> float:
        """Take one notify datagram; returns the time of the last watchdog ping."""
        for line in message.splitlines():
            key, _, value = line.partition("=")
            if key == "READY" and value == "1":
                with self._changed:
                    life.ready = now
                    self._changed.notify_all()
                last_ping = now
            elif key == "WATCHDOG" and value == "1":
                last_ping = now
            elif key == "STATUS":
                life.status = value
                counts = COUNTS.search(value)
                if counts:
                    life.results = sum(int(n) for n in counts.groups())
        return last_ping

    def _end(self, life: Lifetime, process: subprocess.Popen[str], first: int, grace_s: float, why: str) -> None:
        """Send ``first``; SIGKILL if the process is still there after ``grace_s``."""
        life.end = why
        process.send_signal(first)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()

    def _drain(self) -> list[str]:
        messages = []
        while True:
            try:
                messages.append(self._socket.recv(65536).decode(errors="replace"))
            except BlockingIOError:
                return messages

    def _read_output(self, process: subprocess.Popen[str], life: Lifetime) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.log.write(f"[cell {life.number}] {line}")
            if ERROR_LINE in line:
                life.error_line = line.strip()
            with self._changed:
                self.lines.append(line)
                self.line_count += 1
        self.log.flush()


def _no_core_dumps() -> None:
    """In the child: a SIGABRT from the watchdog leaves no core file behind (systemd hands cores to coredump)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
