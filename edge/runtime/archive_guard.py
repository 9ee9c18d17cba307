"""Archive first: a result reaches the sinks (OPC UA, PLC) only once its row is committed.

While the archive refuses writes (disk full, read-only, failing disk) the results that reach the outputs stage wait
here, in order and without their images, and the archive is retried with the camera's backoff
(``watchdog.reconnect_backoff_s``); the cell reports Error and takes no trigger. After ``watchdog.recovery_attempts``
failed tries the cell counts as unrecoverable (no ``WATCHDOG=1``: systemd restarts it, and the restarted cell
answers every trigger it had accepted with ERROR "cell restarted", from the reservations in the archive). When a
try succeeds, the waiting results are archived and published in order and the cell is healthy again by itself."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import replace

from edge.runtime.archive import ArchiveError, ResultArchive
from okcell.result import CellResult

log = logging.getLogger(__name__)


class ArchiveGuard:
    """Commits results to ``archive`` before anyone sees them; holds them while it fails (see module docstring).
    ``commit`` and ``retry`` are called by the outputs stage only; ``reserve`` from any thread."""

    def __init__(self, archive: ResultArchive, backoff_s: tuple[float, float], give_up_after: int) -> None:
        self.archive = archive
        self.backoff_s = backoff_s
        self.give_up_after = give_up_after
        self.failures = 0  # consecutive failed writes
        self.refused = 0  # triggers and self-triggered frames refused while the archive fails
        self._reason = ""
        self._held: deque[CellResult] = deque()
        self._retry_at = 0.0

    @property
    def error(self) -> str:
        """Why the archive fails and what waits on it; "" while it works."""
        if not self._reason:
            return ""
        text = f"archive failed: {self._reason}"
        if self._held:
            text += f"; {len(self._held)} result(s) waiting to be archived"
        if self.refused:
            text += f"; {self.refused} trigger(s) refused"
        return text

    @property
    def given_up(self) -> bool:
        """The archive failed ``give_up_after`` times in a row: the cell cannot recover by itself."""
        return self.failures >= self.give_up_after

    def reserve(self, part_id: str | None, trigger_time: float) -> int:
        """A durable result id from the archive; ArchiveError (counted as a failure) if it refuses."""
        try:
            return self.archive.reserve(part_id, trigger_time)
        except ArchiveError as exc:
            self._failed(exc)
            raise

    def commit(self, result: CellResult) -> bool:
        """Archive ``result``; True if it may now be published. False: it waits here (the archive failed, or older
        results are still waiting), or its id already had a result (dropped: one result per id)."""
        if self._held:
            self._hold(result)
            return False
        try:
            stored = self.archive.publish(result)
        except ArchiveError as exc:
            self._failed(exc)
            self._hold(result)
            return False
        if not stored:
            log.error("archive: cycle %d already has a result; this one (%s) is dropped", result.cycle, result.decision)
        return stored

    def retry_due(self) -> bool:
        return bool(self._reason) and time.monotonic() >= self._retry_at

    def retry_now(self) -> None:
        """Try again at the next chance instead of after the backoff (operator reset)."""
        self._retry_at = 0.0

    def retry(self) -> list[CellResult]:
        """Archive the waiting results in order (with none waiting, test one write); returns those now archived,
        to be published. Stops at the first refusal and schedules the next try."""
        archived: list[CellResult] = []
        try:
            if not self._held:
                self.archive.check_writable()
            while self._held:
                if self.archive.publish(self._held[0]):
                    archived.append(self._held[0])
                self._held.popleft()
        except ArchiveError as exc:
            self._failed(exc)
            return archived
        if self._reason:
            log.warning("archive works again after %d failed tries; %d waiting result(s) archived",
                        self.failures, len(archived))
        self._reason, self.failures, self.refused = "", 0, 0
        return archived

    def close(self) -> list[CellResult]:
        """Last try at shutdown (returns what it archived); what still cannot be archived is answered at the next
        start, from its reservation."""
        archived = self.retry() if self._held else []
        if self._held:
            log.error("archive: %d result(s) could not be archived (%s); their triggers get ERROR 'cell restarted' "
                      "at the next start", len(self._held), self._reason)
        return archived

    def _failed(self, exc: ArchiveError) -> None:
        self.failures += 1
        first, longest = self.backoff_s
        delay = min(first * 2 ** (self.failures - 1), longest)
        self._retry_at = time.monotonic() + delay
        self._reason = str(exc)
        log.error("%s (failure %d; next try in %.1f s)", exc, self.failures, delay)

    def _hold(self, result: CellResult) -> None:
        """Keep a light copy (no frame, no anomaly map: the images of a result that waited are not stored)."""
        self._held.append(replace(result, frame=None, inspection=replace(result.inspection, anomaly_map=None)))
