"""The faults, injected one at a time on a schedule of trigger counts, each until the cell has recovered.

A fault's window runs from its injection to the recovery it waits for (a new READY=1, the camera or archive back,
clients reconnected); the ledger leaves triggers sent in a window (and ``SETTLE_S`` after it) out of the latency.
Each fault also checks that the cell reacted as documented (docs/cell.md) and says so in its outcome."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from faultsuite import disk
from faultsuite.plc import Plc
from faultsuite.systemd import Supervisor

SETTLE_S = 5.0
RECOVERY_TIMEOUT_S = 300.0

# the faults by key (``--faults``) and title: first those that end the cell process (restarted by systemd's part)
KINDS = {
    "sigkill": "SIGKILL",
    "sigstop": "SIGSTOP past the watchdog",
    "read-only": "archive read-only, then a crash",
    "disk-full-long": "disk full until systemd restarts",
    "camera": "camera loss (replay folder renamed)",
    "disk-full": "disk full for 2 s",
    "sighup-good": "SIGHUP with a good recipe",
    "sighup-broken": "SIGHUP with a broken recipe",
    "activate-good": "ActivateRecipe, good recipe",
    "activate-broken": "ActivateRecipe, broken recipe",
    "drop-close": "client dropped (session closed)",
    "drop-cut": "client dropped (socket cut)",
    "drop-all": "every client dropped",
}
RESTARTING = ("sigkill", "sigstop", "read-only", "disk-full-long")


@dataclass
class Rig:
    """The files the faults act on."""

    images: Path  # the replay folder
    disk: Path  # the archive's tmpfs
    archive: Path  # the archive folder on it
    recipes: Path  # recipe folders: the good ones, the broken one and the link the cell.yaml names
    link: str  # the recipe name in cell.yaml: a symbolic link to one of ``good``
    good: tuple[str, str]
    broken: str

    def point_link(self, recipe: str) -> None:
        """Switch the configured recipe (the link) to ``recipe``, atomically."""
        staged = self.recipes / f".{self.link}.new"
        staged.unlink(missing_ok=True)
        staged.symlink_to(recipe)
        staged.replace(self.recipes / self.link)

    @property
    def linked(self) -> str:
        return (self.recipes / self.link).readlink().name


@dataclass
class FaultRecord:
    kind: str
    at_trigger: int
    started: float  # time.monotonic()
    ended: float = 0.0
    outcome: str = ""
    as_documented: bool = False


def schedule(total: int, every: int, quick: bool, kinds: list[str]) -> list[tuple[int, str]]:
    """(trigger count, fault key) pairs for the fault ``kinds`` (keys of KINDS). The restarting faults come first
    (``quick``: each once in the first 25 %, else within the first 40 %), so the last process lives long enough to
    measure its memory; ``quick``: every fault once, else one fault per ``every`` triggers, cycling through them."""
    restarting = [k for k in kinds if k in RESTARTING]
    in_process = [k for k in kinds if k not in RESTARTING]
    if quick:
        early = [(int(total * (0.05 + 0.065 * n)), kind) for n, kind in enumerate(restarting)]
        late = [(int(total * (0.33 + 0.06 * n)), kind) for n, kind in enumerate(in_process)]
        return early + late
    plan: list[tuple[int, str]] = []
    for at in range(every, total - every // 2, every):
        pool = kinds if at <= 0.4 * total else in_process
        if pool:
            plan.append((at, pool[len(plan) % len(pool)]))
    return plan


class Injector:
    """Runs the schedule in a thread (see module docstring)."""

    def __init__(self, rig: Rig, supervisor: Supervisor, plc: Plc, clients: int, note: Callable[[str], None]) -> None:
        self.rig, self.supervisor, self.plc, self.clients, self.note = rig, supervisor, plc, clients, note
        self.records: list[FaultRecord] = []
        self.skipped: list[str] = []
        self._good_next = 1  # the good recipe the next good switch goes to
        self._thread: threading.Thread | None = None
        self._faults: dict[str, Callable[[FaultRecord], None]] = dict(zip(KINDS, (
            self._sigkill, self._sigstop, self._read_only, self._disk_full_long, self._camera, self._disk_full_short,
            self._sighup_good, self._sighup_broken, self._activate_good, self._activate_broken,
            lambda r: self._drop(r, [0], abrupt=False), lambda r: self._drop(r, [min(1, clients - 1)], abrupt=True),
            lambda r: self._drop(r, list(range(clients)), abrupt=True),
        )))

    def start(self, plan: list[tuple[int, str]]) -> None:
        self._thread = threading.Thread(target=self._run, args=(plan,), name="faults", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def _run(self, plan: list[tuple[int, str]]) -> None:
        for number, (at, kind) in enumerate(plan):
            while self.plc.sent < at and not self.plc.finished:
                time.sleep(0.1)
            if self.plc.finished:
                self.skipped += [KINDS[k] for _, k in plan[number:]]
                return
            self._wait_healthy()
            record = FaultRecord(KINDS[kind], self.plc.sent, time.monotonic())
            self.records.append(record)
            self.note(f"fault {number + 1}/{len(plan)} at trigger {record.at_trigger}: {record.kind}")
            self.supervisor.fault = record.kind
            try:
                self._faults[kind](record)
            except Exception as exc:  # a fault that did not recover: reported, and the run goes on
                record.outcome = f"not recovered: {type(exc).__name__}: {exc}"
                record.as_documented = False
            finally:
                self.supervisor.fault = ""
                record.ended = time.monotonic()
            self.note(f"  {record.outcome} ({record.ended - record.started:.1f} s)")

    def _wait_healthy(self, timeout_s: float = RECOVERY_TIMEOUT_S) -> None:
        """Until the cell is Operational with its camera and every client connected (or ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            life = self.supervisor.current
            if (life is not None and life.ready is not None and life.ended is None
                    and life.status.startswith("Operational") and "camera connected" in life.status
                    and (self.plc.connected() == self.clients or self.plc.finished)):
                return
            time.sleep(0.1)

    def _restarted(self, life_number: int, record: FaultRecord, expected_end: str) -> None:
        """Wait for the process ``life_number`` to end and a new one to be ready; check how it ended."""
        ended = self.supervisor.wait_end(life_number - 1, RECOVERY_TIMEOUT_S)
        ready = self.supervisor.wait_ready(ended.number, RECOVERY_TIMEOUT_S)
        record.as_documented = ended.end == expected_end
        record.outcome = f"ended by {ended.end}; process {ready.number} ready {(ready.ready or 0) - (ended.ended or 0):.1f} s later"

    # ---- restarting faults -----------------------------------------------------------------------------------

    def _sigkill(self, record: FaultRecord) -> None:
        life = self.supervisor.signal(signal.SIGKILL)
        self._restarted(life.number, record, "SIGKILL")

    def _sigstop(self, record: FaultRecord) -> None:
        life = self.supervisor.signal(signal.SIGSTOP)
        self._restarted(life.number, record, "watchdog timeout")

    def _read_only(self, record: FaultRecord) -> None:
        """The archive folder read-only, then a crash: the restart must be refused (exit 2) until it is writable."""
        disk.bind_read_only(self.rig.archive)
        try:
            time.sleep(1.0)  # the running cell keeps its open database; new image files fail
            life = self.supervisor.signal(signal.SIGKILL)
            refused = self.supervisor.wait_end(life.number, RECOVERY_TIMEOUT_S)
        finally:
            disk.unmount(self.rig.archive)
        self.supervisor.start_if_failed()
        ready = self.supervisor.wait_ready(refused.number, RECOVERY_TIMEOUT_S)
        record.as_documented = refused.end == "exit 2" and "read-only" in refused.error_line
        record.outcome = f"restart refused ({refused.end}: {refused.error_line[-90:]}); ready again after fix " \
                         f"(process {ready.number})"

    def _disk_full_long(self, record: FaultRecord) -> None:
        """The disk kept full until the cell gives up, systemd restarts it and a start is refused for want of space
        (a start may first succeed on the space of deleted old images, and give up again); then space again."""
        life = self.supervisor.current
        assert life is not None
        ballast = disk.Ballast(self.rig.disk)
        try:
            ballast.hold(lambda: any(x.end == "exit 2" for x in self.supervisor.lifetimes[life.number:]),
                         RECOVERY_TIMEOUT_S)
        finally:
            ballast.remove()
        later = self.supervisor.lifetimes[life.number - 1:]
        refused = next(x for x in later[1:] if x.end == "exit 2")
        self.supervisor.start_if_failed()
        ready = self.supervisor.wait_ready(refused.number, RECOVERY_TIMEOUT_S)
        gave_up = later[:refused.number - life.number]
        record.as_documented = (all(x.end == "watchdog timeout" and "archive failed" in x.status for x in gave_up)
                                and "archive disk full" in refused.error_line)
        record.outcome = (f"{len(gave_up)} process(es) gave up (watchdog timeout; STATUS: ...{life.status[-60:]}); "
                          f"restart refused ({refused.end}: ...{refused.error_line[-50:]}); ready again once freed "
                          f"(process {ready.number})")

    # ---- faults the running process must ride out ------------------------------------------------------------

    def _camera(self, record: FaultRecord) -> None:
        """The replay folder away for 2 s: triggers meanwhile are ERROR, the cell reconnects by itself."""
        life, since = self.supervisor.current, self.supervisor.line_count
        away = self.rig.images.with_name(self.rig.images.name + ".away")
        self.rig.images.rename(away)
        try:
            lost = self.supervisor.wait_line("service: camera: ", since, 60)
            time.sleep(max(0.0, record.started + 2.0 - time.monotonic()))
        finally:
            away.rename(self.rig.images)
        back = self.supervisor.wait_line("service: camera reconnected after", since, RECOVERY_TIMEOUT_S)
        record.as_documented = self.supervisor.current is life
        record.outcome = f"{lost.strip()[-70:]}; {back.strip()[back.index('camera'):]}"

    def _disk_full_short(self, record: FaultRecord) -> None:
        """The archive's disk kept full for 2 s after the first refused write: the cell must recover by itself."""
        life, since = self.supervisor.current, self.supervisor.line_count
        ballast = disk.Ballast(self.rig.disk)
        try:
            # the cell deletes its images to make room first, and SQLite writes into the space its files hold
            ballast.hold(lambda: self.supervisor.find_line("(failure 1;", since) is not None, RECOVERY_TIMEOUT_S)
            until = time.monotonic() + 2.0
            ballast.hold(lambda: time.monotonic() > until, 60)
        finally:
            ballast.remove()
        back = self.supervisor.wait_line("archive_guard: archive works again after", since, RECOVERY_TIMEOUT_S)
        record.as_documented = self.supervisor.current is life
        record.outcome = f"{back.strip().split('archive_guard: ')[1]}; no restart" if record.as_documented else \
            "the cell was restarted"

    def _sighup(self, record: FaultRecord, recipe: str, expected: str) -> str:
        since = self.supervisor.line_count
        self.rig.point_link(recipe)
        self.supervisor.signal(signal.SIGHUP)
        line = self.supervisor.wait_line("SIGHUP:", since, 120).strip()
        record.as_documented = expected in line
        record.outcome = line[line.index("SIGHUP:"):][:120]
        return line

    def _sighup_good(self, record: FaultRecord) -> None:
        self._sighup(record, self._next_good(), "reloaded")

    def _sighup_broken(self, record: FaultRecord) -> None:
        previous = self.rig.linked
        try:
            self._sighup(record, self.rig.broken, "refused")
        finally:
            self.rig.point_link(previous)  # a restart must find a good recipe

    def _activate_good(self, record: FaultRecord) -> None:
        recipe = self._next_good()
        status = self.plc.activate_recipe(recipe)
        record.as_documented = status == "Good"
        record.outcome = f"ActivateRecipe({recipe}): {status}"

    def _activate_broken(self, record: FaultRecord) -> None:
        status = self.plc.activate_recipe(self.rig.broken)
        record.as_documented = status == "BadConfigurationError"
        record.outcome = f"ActivateRecipe({self.rig.broken}): {status}"

    def _drop(self, record: FaultRecord, clients: list[int], abrupt: bool) -> None:
        self.plc.drop(clients, abrupt, hold_s=1.0)
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while self.plc.connected() < self.clients and not self.plc.finished:
            if time.monotonic() > deadline:
                raise TimeoutError("clients did not reconnect")
            time.sleep(0.05)
        record.as_documented = True
        record.outcome = f"client(s) {clients} {'cut' if abrupt else 'closed'}, all reconnected"

    def _next_good(self) -> str:
        recipe = self.rig.good[self._good_next]
        self._good_next = 1 - self._good_next
        return recipe
