"""Result archive: every cell result in a local SQLite database; NOK frames + heatmaps (and a sample of OK ones)
as PNG files, written off the hot path under a disk quota and a free-space floor that delete the oldest first.

Ledger. The archive issues the result ids (``reserve``): each id's reservation (part id, trigger time) is committed
before the id is handed out, and ids are reserved ahead in blocks of 1,000 whose end is always fsynced. A result
commits in the same transaction that clears its reservation. So after a kill or a power loss no id is issued again
(the next start continues after the reserved block; a clean ``stop`` gives the rest of the block back), and the
triggers that were accepted but never finished are listed by ``unfinished`` (the cell answers them with ERROR).

Sync policy. The database runs in WAL mode and each result is one committed transaction, made in ``publish``
*before* any other sink (OPC UA, PLC) sees the result — so a result that was published is in the database.
With ``sync: normal`` (default, ``PRAGMA synchronous=NORMAL``) a commit survives a crash or kill of the process
(the WAL is written before ``publish`` returns) but the last commits may be lost on power loss or an OS crash
until the next WAL checkpoint. ``sync: full`` fsyncs the WAL on every commit (survives power loss; costs about one
fsync per cycle). Image files are best effort: written by a background thread from a bounded queue; if the disk
cannot keep up, or less than ``min_free_mb`` would stay free on its disk once the oldest images are deleted,
images are skipped (counted in ``images_skipped``), never results.

A database that cannot be written (read-only, full) is a :class:`~okcell.schema.ConfigError` naming the path at
``start``, and an :class:`ArchiveError` (nothing stored, nothing issued) afterwards."""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from okcell.result import CellResult, InspectionResult
from okcell.schema import ConfigError

Overlay = Callable[[np.ndarray, InspectionResult], np.ndarray]  # frame, inspection -> BGR heatmap overlay

log = logging.getLogger(__name__)

_SCHEMA = ("""
CREATE TABLE IF NOT EXISTS results (
    cycle INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    part_id TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('OK', 'NOK', 'ERROR')),
    score REAL,
    threshold REAL,
    recipe_id TEXT,
    error TEXT,
    nearest_label TEXT,
    timings_json TEXT NOT NULL,
    frame_path TEXT,
    heatmap_path TEXT
)
""", """
CREATE TABLE IF NOT EXISTS pending (
    cycle INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    part_id TEXT NOT NULL
)
""", """
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    reserved_to INTEGER NOT NULL
)
""", "INSERT OR IGNORE INTO ledger (id, reserved_to) VALUES (1, 0)")
_IMAGE_QUEUE_DEPTH = 32
ID_BLOCK = 1000  # ids reserved ahead with one fsync; a restart after a kill skips the rest of the block
_MB = 1024 * 1024


class ArchiveError(RuntimeError):
    """The database refused a write (full, read-only or failing disk); nothing was stored or issued."""


@dataclass(frozen=True)
class Reservation:
    """An issued result id whose result is not archived yet."""

    cycle: int
    part_id: str
    time: float  # UNIX time of the trigger


class ResultArchive:
    """A :class:`~edge.runtime.outputs.ResultSink` that stores results (``directory/results.sqlite``) and images
    (``directory/images/``). ``overlay`` draws the heatmap PNG (without it only the frame is stored)."""

    name = "archive"

    def __init__(self, directory: Path | str, quota_mb: float = 2048.0, ok_sample_every: int = 0,
                 sync: str = "normal", overlay: Overlay | None = None, min_free_mb: float = 0.0) -> None:
        self.directory = Path(directory)
        self.images_dir = self.directory / "images"
        self.db_path = self.directory / "results.sqlite"
        self.quota_bytes = int(quota_mb * _MB)
        self.min_free_bytes = int(min_free_mb * _MB)
        self.ok_sample_every = ok_sample_every
        self.sync = sync
        self.overlay = overlay
        self.images_written = 0
        self.images_skipped = 0
        self.images_deleted = 0
        self.low_space = False  # images are being skipped: under the free-space floor with no image left to delete
        self.issued = 0  # the highest result id handed out (``reserve``)
        self._reserved_to = 0
        self._db: sqlite3.Connection | None = None
        # (result, frame): the writer keeps its own reference to the frame (the service drops result.frame after publish)
        self._images: queue.Queue[tuple[CellResult, np.ndarray] | None] = queue.Queue(maxsize=_IMAGE_QUEUE_DEPTH)
        self._writer: threading.Thread | None = None
        self._ok_seen = 0
        self._stored: list[tuple[int, list[Path], int]] = []  # (cycle, files, bytes), oldest first
        self._stored_bytes = 0
        self._lock = threading.RLock()

    # database

    def open(self) -> None:
        """Create/open the database (idempotent; ``start`` calls it) and check that results can be committed:
        ConfigError naming the path if the folder is read-only, the database cannot be written, or less than
        ``min_free_mb`` is free once the oldest images are deleted."""
        if self._db is not None:
            return
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._scan_images()
            self._enforce_limits()
            self.check_writable()
            free = self.free_bytes()
            if free < self.min_free_bytes:
                raise ConfigError(f"{self.directory}: archive disk full: {free / _MB:.1f} MB free, archive.min_free_mb "
                                  f"is {self.min_free_bytes / _MB:g} (old images already deleted); free space there")
            reserved_to, = self._db.execute("SELECT reserved_to FROM ledger").fetchone()
            highest, = self._db.execute("SELECT MAX(m) FROM (SELECT MAX(cycle) AS m FROM results "
                                        "UNION ALL SELECT MAX(cycle) FROM pending)").fetchone()
        except (sqlite3.Error, OSError, ArchiveError, ConfigError) as exc:
            if self._db is not None:
                self._db.close()
                self._db = None
            if isinstance(exc, ConfigError):
                raise
            folder = self.directory if self.directory.exists() else self.directory.parent
            if not os.access(folder, os.W_OK):
                raise ConfigError(f"{self.directory}: the archive folder is read-only ({exc})") from exc
            raise ConfigError(f"{self.db_path}: the archive cannot be written ({exc})") from exc
        self._reserved_to = int(reserved_to)
        self.issued = max(self._reserved_to, int(highest or 0))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    @property
    def _synchronous(self) -> str:
        return "FULL" if self.sync == "full" else "NORMAL"

    def _open_db(self, what: str) -> sqlite3.Connection:
        if self._db is None:
            raise ArchiveError(f"{self.db_path}: {what}: the archive is not open")
        return self._db

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; a database error becomes ArchiveError naming ``what``."""
        with self._lock:
            db = self._open_db(what)
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                finally:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise ArchiveError(f"{self.db_path}: {what}: {exc}") from exc

    def check_writable(self) -> None:
        """Commit one small write; ArchiveError if the database refuses it."""
        with self._transaction("write check") as db:
            db.execute("UPDATE ledger SET reserved_to = reserved_to")

    def reserve(self, part_id: str | None, trigger_time: float) -> int:
        """Issue the next result id, durably (see module docstring); ``part_id`` None names the cycle by its id.
        ArchiveError (no id issued) if the database refuses."""
        with self._lock:
            cycle = self.issued + 1
            if cycle > self._reserved_to:
                self._reserve_block(-(-cycle // ID_BLOCK) * ID_BLOCK)
            with self._transaction(f"result id {cycle} not reserved") as db:
                db.execute("INSERT INTO pending (cycle, time, part_id) VALUES (?, ?, ?)",
                           (cycle, trigger_time, str(cycle) if part_id is None else part_id))
            self.issued = cycle
            return cycle

    def _reserve_block(self, block_end: int) -> None:
        """Commit the end of the next block of ids with an fsync whatever the sync mode: it must survive power loss."""
        db = self._open_db("ids not reserved")
        db.execute("PRAGMA synchronous=FULL")
        try:
            with self._transaction(f"ids up to {block_end} not reserved"):
                db.execute("UPDATE ledger SET reserved_to = ?", (block_end,))
        finally:
            db.execute(f"PRAGMA synchronous={self._synchronous}")
        self._reserved_to = block_end

    def unfinished(self) -> list[Reservation]:
        """Issued ids without an archived result (accepted triggers the cell never finished), oldest first."""
        self.open()
        assert self._db is not None
        with self._lock:
            rows = self._db.execute("SELECT cycle, part_id, time FROM pending ORDER BY cycle").fetchall()
        return [Reservation(int(cycle), str(part_id), float(when)) for cycle, part_id, when in rows]

    def counts(self, since_cycle: int = 0) -> dict[str, int]:
        """Results per decision with cycle > ``since_cycle``."""
        self.open()
        assert self._db is not None
        with self._lock:
            rows = self._db.execute(
                "SELECT decision, COUNT(*) FROM results WHERE cycle > ? GROUP BY decision", (since_cycle,)
            ).fetchall()
        counts = {"OK": 0, "NOK": 0, "ERROR": 0}
        counts.update({decision: int(n) for decision, n in rows})
        return counts

    def rows(self, since_cycle: int = 0) -> list[dict[str, Any]]:
        """Archived results with cycle > ``since_cycle``, in cycle order."""
        self.open()
        assert self._db is not None
        with self._lock:
            cursor = self._db.execute("SELECT * FROM results WHERE cycle > ? ORDER BY cycle", (since_cycle,))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    # sink interface

    def start(self) -> None:
        self.open()
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_images, name="okcell-archive-images", daemon=True)
            self._writer.start()

    def publish(self, result: CellResult) -> bool:
        """Commit the result row and clear its reservation (synchronously), then queue its images (never blocks on
        the disk). False (nothing stored) if this id already has a result; ArchiveError if the database refuses."""
        inspection = result.inspection
        with self._transaction(f"result {result.cycle} not archived") as db:
            stored = db.execute(
                "INSERT OR IGNORE INTO results (cycle, time, part_id, decision, score, threshold, recipe_id, error, "
                "nearest_label, timings_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (result.cycle, result.timestamp, result.part_id, inspection.decision, inspection.score,
                 inspection.threshold, result.recipe_id, inspection.error, inspection.nearest_label,
                 json.dumps({k: round(v, 3) for k, v in inspection.timings_ms.items()})),
            ).rowcount == 1
            db.execute("DELETE FROM pending WHERE cycle = ?", (result.cycle,))
        if not stored:
            return False
        if result.frame is not None and self._wants_images(result):
            try:
                self._images.put_nowait((result, result.frame))
            except queue.Full:
                self.images_skipped += 1
                return True
            if result.inspection.anomaly_map is not None and self.overlay is not None:
                result.heatmap_path = str(self._image_paths(result)[1])  # known now, so sinks can publish it
        return True

    def stop(self) -> None:
        if self._writer is not None:
            self._images.put(None)
            self._writer.join(timeout=30)
            self._writer = None
        if self._db is not None:
            try:  # a clean stop gives the rest of its block back (the next start continues without a gap); the
                # condition keeps a reader of a running cell's archive from lowering the cell's mark
                with self._transaction("reserved ids not released") as db:
                    db.execute("UPDATE ledger SET reserved_to = ? WHERE reserved_to = ?",
                               (self.issued, self._reserved_to))
            except ArchiveError as exc:
                log.warning("archive: %s (the next start skips the rest of the block)", exc)
            with self._lock:
                self._db.close()
            self._db = None

    def free_bytes(self) -> int:
        """Free space on the archive's disk (as available to the cell's unprivileged user)."""
        return shutil.disk_usage(self.directory).free

    # images

    def _wants_images(self, result: CellResult) -> bool:
        if result.decision != "OK":
            return True
        self._ok_seen += 1
        return self.ok_sample_every > 0 and self._ok_seen % self.ok_sample_every == 0

    def _write_images(self) -> None:
        while (item := self._images.get()) is not None:
            result, frame = item
            try:
                self._store(result, frame)
            except Exception:  # a full or failing disk must not stop the cell
                log.exception("archive: images of cycle %d not written", result.cycle)
                self.images_skipped += 1

    def _store(self, result: CellResult, frame: np.ndarray) -> None:
        self._enforce_limits()
        self.low_space = self.free_bytes() < self.min_free_bytes
        if self.low_space:  # results need the space more than images do
            self.images_skipped += 1
            return
        frame_path, planned_heatmap = self._image_paths(result)
        _write_png(frame_path, frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        files = [frame_path]
        heatmap_path = None
        if result.inspection.anomaly_map is not None and self.overlay is not None:
            heatmap_path = planned_heatmap
            _write_png(heatmap_path, self.overlay(frame, result.inspection))
            files.append(heatmap_path)
            result.heatmap_path = str(heatmap_path)
        size = sum(p.stat().st_size for p in files)
        with self._lock:
            assert self._db is not None
            self._db.execute("UPDATE results SET frame_path = ?, heatmap_path = ? WHERE cycle = ?",
                             (str(frame_path), str(heatmap_path) if heatmap_path else None, result.cycle))
        self._stored.append((result.cycle, files, size))
        self._stored_bytes += size
        self.images_written += 1
        self._enforce_limits()

    def _image_paths(self, result: CellResult) -> tuple[Path, Path]:
        stem = f"{result.cycle:010d}_{result.decision}"
        return self.images_dir / f"{stem}_frame.png", self.images_dir / f"{stem}_heatmap.png"

    def _enforce_limits(self) -> None:
        """Delete the oldest images while over the quota or under the free-space floor."""
        while self._stored and (self._stored_bytes > self.quota_bytes or self.free_bytes() < self.min_free_bytes):
            cycle, files, size = self._stored.pop(0)
            for path in files:
                path.unlink(missing_ok=True)
            self._stored_bytes -= size
            self.images_deleted += 1
            with self._lock:
                assert self._db is not None
                self._db.execute("UPDATE results SET frame_path = NULL, heatmap_path = NULL WHERE cycle = ?", (cycle,))

    def _scan_images(self) -> None:
        """Pick up images left by earlier runs so the quota covers them (names start with the cycle)."""
        by_cycle: dict[int, list[Path]] = {}
        for path in sorted(self.images_dir.glob("*.png")):
            head = path.name.split("_", 1)[0]
            if head.isdigit():
                by_cycle.setdefault(int(head), []).append(path)
        self._stored = [(c, files, sum(p.stat().st_size for p in files)) for c, files in sorted(by_cycle.items())]
        self._stored_bytes = sum(size for _, _, size in self._stored)


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: could not write PNG")
