"""Stage heartbeats and the cell's self-watchdog, which feeds systemd's watchdog only while the cell is healthy.

Each stage marks when it starts and ends work on an item (``begin``/``end``); waiting for input is not work. A stage
busy longer than its budget is *stalled*: the cell goes to an error state, ``STATUS=`` names the stage, ``WATCHDOG=1``
is withheld and the stage is restarted (``recover(stage)``; acquisition reconnects, inference re-initialises). After
``max_attempts`` failed recoveries the watchdog gives up for good, so that systemd (``WatchdogSec``) restarts the
process. The check runs every half ``WATCHDOG_USEC`` but at least once a second, so that a cell healthy again feeds
systemd at once (with WatchdogSec=10, a check every 5 s let a moment of ill health outlast the budget)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from edge.runtime.sdnotify import SdNotifier, watchdog_interval_s

log = logging.getLogger(__name__)

LONGEST_CHECK_INTERVAL_S = 1.0


class StageHeartbeat:
    """Busy/idle marks of one stage (thread-safe enough: single writer, readers take a snapshot)."""

    def __init__(self, name: str, budget_s: float) -> None:
        self.name = name
        self.budget_s = budget_s
        self.busy_since: float | None = None
        self.last_beat = time.monotonic()
        self.items = 0

    def begin(self) -> None:
        self.busy_since = self.last_beat = time.monotonic()

    def end(self) -> None:
        self.busy_since = None
        self.last_beat = time.monotonic()
        self.items += 1

    def stalled_for(self, now: float | None = None) -> float | None:
        """Seconds past the budget if stalled, else None."""
        since = self.busy_since
        if since is None:
            return None
        over = (time.monotonic() if now is None else now) - since - self.budget_s
        return over if over > 0 else None


@dataclass
class Health:
    healthy: bool
    status: str  # the STATUS= text
    stalled_stage: str | None = None


class CellWatchdog:
    """Thread that checks heartbeats and talks to systemd.

    ``status()`` gives the STATUS text of a healthy cell and whether it is healthy (e.g. False while the camera
    cannot be reconnected); ``recover(stage)`` restarts a stalled stage and returns True if it was restarted;
    ``recovered()`` is called once every restarted stage works again."""

    def __init__(self, notifier: SdNotifier, heartbeats: list[StageHeartbeat], status: Callable[[], tuple[bool, str]],
                 recover: Callable[[str], bool], max_attempts: int = 3, interval_s: float | None = None,
                 recovered: Callable[[], None] = lambda: None) -> None:
        self.notifier = notifier
        self.heartbeats = heartbeats
        self._status = status
        self._recover = recover
        self._recovered = recovered
        self.max_attempts = max_attempts
        self.interval_s = interval_s or min(watchdog_interval_s() or LONGEST_CHECK_INTERVAL_S, LONGEST_CHECK_INTERVAL_S)
        self.attempts: dict[str, int] = {hb.name: 0 for hb in heartbeats}
        self._items_at_recovery: dict[str, int] = {hb.name: 0 for hb in heartbeats}
        self.gave_up: str | None = None
        self.last_health = Health(True, "starting")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="okcell-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check(self) -> Health:
        """One round: find stalls, trigger recovery, report. Returns the health that was reported."""
        now = time.monotonic()
        for hb in self.heartbeats:
            stalled = hb.stalled_for(now)
            if stalled is None:
                works_again = hb.items > self._items_at_recovery[hb.name]  # finished an item since its restart
                if hb.busy_since is None and works_again and self.attempts[hb.name] and self.gave_up is None:
                    self.attempts[hb.name] = 0
                    if not any(self.attempts.values()):
                        self._recovered()
                continue
            text = f"ERROR: stage {hb.name} stalled ({hb.budget_s + stalled:.1f} s > budget {hb.budget_s:.1f} s)"
            if self.gave_up is None:
                if self.attempts[hb.name] >= self.max_attempts:
                    self.gave_up = hb.name
                    log.error("%s; %d recoveries failed: stopping the systemd watchdog", text, self.max_attempts)
                else:
                    self.attempts[hb.name] += 1
                    self._items_at_recovery[hb.name] = hb.items
                    log.error("%s; restarting it (attempt %d of %d)", text, self.attempts[hb.name], self.max_attempts)
                    try:
                        self._recover(hb.name)
                    except Exception:  # recovery must never kill the watchdog thread
                        log.exception("recovery of stage %s failed", hb.name)
            return self._report(Health(False, f"{text}; {self._status()[1]}", hb.name))
        if self.gave_up is not None:
            return self._report(Health(False, f"ERROR: stage {self.gave_up} could not be recovered; {self._status()[1]}",
                                       self.gave_up))
        healthy, text = self._status()
        return self._report(Health(healthy, text))

    def _report(self, health: Health) -> Health:
        self.last_health = health
        if health.healthy:
            self.notifier.notify("WATCHDOG=1", f"STATUS={health.status}")
        else:
            self.notifier.status(health.status)
        return health

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:
                log.exception("watchdog check failed")
