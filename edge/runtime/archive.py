"""Result archive: every cell result in a local SQLite database; NOK frames + heatmaps (and a sample of OK ones)
as PNG files, written off the hot path under a disk quota that deletes the oldest first.

Sync policy. The database runs in WAL mode and each result is one committed transaction, made in ``publish``
*before* any other sink (OPC UA, PLC) sees the result — so a result that was published is in the database.
With ``sync: normal`` (default, ``PRAGMA synchronous=NORMAL``) a commit survives a crash or kill of the process
(the WAL is written before ``publish`` returns) but the last commits may be lost on power loss or an OS crash
until the next WAL checkpoint. ``sync: full`` fsyncs the WAL on every commit (survives power loss; costs about one
fsync per cycle). Image files are best effort: written by a background thread from a bounded queue; if the disk
cannot keep up, images are skipped (counted in ``images_skipped``), never results."""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from okcell.result import CellResult, InspectionResult

Overlay = Callable[[np.ndarray, InspectionResult], np.ndarray]  # frame, inspection -> BGR heatmap overlay

log = logging.getLogger(__name__)

_SCHEMA = """
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
"""
_IMAGE_QUEUE_DEPTH = 32


class ResultArchive:
    """A :class:`~edge.runtime.outputs.ResultSink` that stores results (``directory/results.sqlite``) and images
    (``directory/images/``). ``overlay`` draws the heatmap PNG (without it only the frame is stored)."""

    name = "archive"

    def __init__(self, directory: Path | str, quota_mb: float = 2048.0, ok_sample_every: int = 0,
                 sync: str = "normal", overlay: Overlay | None = None) -> None:
        self.directory = Path(directory)
        self.images_dir = self.directory / "images"
        self.db_path = self.directory / "results.sqlite"
        self.quota_bytes = int(quota_mb * 1024 * 1024)
        self.ok_sample_every = ok_sample_every
        self.sync = sync
        self.overlay = overlay
        self.images_written = 0
        self.images_skipped = 0
        self.images_deleted = 0
        self._db: sqlite3.Connection | None = None
        # (result, frame): the writer keeps its own reference to the frame (the service drops result.frame after publish)
        self._images: queue.Queue[tuple[CellResult, np.ndarray] | None] = queue.Queue(maxsize=_IMAGE_QUEUE_DEPTH)
        self._writer: threading.Thread | None = None
        self._ok_seen = 0
        self._stored: list[tuple[int, list[Path], int]] = []  # (cycle, files, bytes), oldest first
        self._stored_bytes = 0
        self._lock = threading.Lock()

    # database

    def open(self) -> None:
        """Create/open the database (idempotent); ``start`` calls it."""
        if self._db is not None:
            return
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._db = self._connect()
        self._db.execute(_SCHEMA)
        self._db.commit()
        self._scan_images()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def last_cycle(self) -> int:
        """The highest archived cycle (0 for a new archive): the cell continues counting after it."""
        self.open()
        assert self._db is not None
        with self._lock:
            row = self._db.execute("SELECT MAX(cycle) FROM results").fetchone()
        return int(row[0] or 0)

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

    def publish(self, result: CellResult) -> None:
        """Commit the result row (synchronously), then queue its images (never blocks on the disk)."""
        assert self._db is not None, "archive not started"
        inspection = result.inspection
        with self._lock:
            self._db.execute(
                "INSERT INTO results (cycle, time, part_id, decision, score, threshold, recipe_id, error, "
                "nearest_label, timings_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (result.cycle, result.timestamp, result.part_id, inspection.decision, inspection.score,
                 inspection.threshold, result.recipe_id, inspection.error, inspection.nearest_label,
                 json.dumps({k: round(v, 3) for k, v in inspection.timings_ms.items()})),
            )
        if result.frame is not None and self._wants_images(result):
            try:
                self._images.put_nowait((result, result.frame))
            except queue.Full:
                self.images_skipped += 1
                return
            if result.inspection.anomaly_map is not None and self.overlay is not None:
                result.heatmap_path = str(self._image_paths(result)[1])  # known now, so sinks can publish it

    def stop(self) -> None:
        if self._writer is not None:
            self._images.put(None)
            self._writer.join(timeout=30)
            self._writer = None
        if self._db is not None:
            with self._lock:
                self._db.close()
            self._db = None

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
        self._enforce_quota()

    def _image_paths(self, result: CellResult) -> tuple[Path, Path]:
        stem = f"{result.cycle:010d}_{result.decision}"
        return self.images_dir / f"{stem}_frame.png", self.images_dir / f"{stem}_heatmap.png"

    def _enforce_quota(self) -> None:
        while self._stored_bytes > self.quota_bytes and self._stored:
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
