"""The result archive: committed rows, NOK images + heatmaps written off the hot path, quota, restart."""

import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from edge.runtime.archive import ResultArchive
from okcell.heatmap import overlay
from okcell.images import read_image
from okcell.result import CellResult, Decision, InspectionResult


def draw_overlay(frame: np.ndarray, outcome: InspectionResult) -> np.ndarray:
    return overlay(frame, outcome.anomaly_map, outcome.threshold, outcome.decision, outcome.score)


def make_result(cycle: int, decision: Decision, frame: np.ndarray) -> CellResult:
    amap = None
    if decision != "ERROR":
        amap = cv2.GaussianBlur(np.random.default_rng(cycle).random(frame.shape[:2]).astype(np.float32), (0, 0), 5)
    score = None if decision == "ERROR" else (0.7 if decision == "NOK" else 0.2)
    outcome = InspectionResult(decision, score, 0.5, anomaly_map=amap, timings_ms={"inspect": 12.5},
                               error="no frame" if decision == "ERROR" else None)
    return CellResult(cycle, cycle, f"part-{cycle}", time.time(), "recipe-a", outcome, frame=frame)


def wait_for(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "archive image writer did not finish"
        time.sleep(0.02)


def test_rows_images_sampling_and_restart(tmp_path: Path):
    frame = cv2.resize(data.astronaut(), (160, 160))
    archive = ResultArchive(tmp_path / "archive", quota_mb=50, ok_sample_every=2, overlay=draw_overlay)
    archive.start()
    assert archive.last_cycle() == 0
    decisions: list[Decision] = ["OK", "NOK", "OK", "ERROR", "OK", "OK", "NOK"]
    for cycle, decision in enumerate(decisions, start=1):
        archive.publish(make_result(cycle, decision, frame))
    # committed before publish returned: a second connection sees every row
    with sqlite3.connect(archive.db_path) as other:
        assert other.execute("SELECT COUNT(*) FROM results").fetchone()[0] == len(decisions)
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # NOK (2), ERROR with a frame (1), every 2nd OK (2 of 4)
    wait_for(lambda: archive.images_written == 5)
    archive.stop()

    reopened = ResultArchive(tmp_path / "archive")
    assert reopened.last_cycle() == 7
    assert reopened.counts() == {"OK": 4, "NOK": 2, "ERROR": 1}
    rows = {row["cycle"]: row for row in reopened.rows()}
    assert rows[2]["decision"] == "NOK" and rows[2]["part_id"] == "part-2" and rows[2]["recipe_id"] == "recipe-a"
    assert '"inspect": 12.5' in rows[2]["timings_json"]
    heatmap = cv2.imread(rows[2]["heatmap_path"])
    assert heatmap is not None and heatmap.shape[:2] == (160, 160)
    assert np.array_equal(read_image(rows[2]["frame_path"]), frame)
    assert rows[1]["frame_path"] is None and rows[3]["frame_path"] is not None  # 1st OK not sampled, 2nd is
    assert rows[4]["error"] == "no frame" and rows[4]["heatmap_path"] is None
    reopened.stop()


def test_quota_deletes_oldest_images_first(tmp_path: Path):
    frame = cv2.resize(data.coffee(), (256, 192))
    archive = ResultArchive(tmp_path / "archive", quota_mb=0.6, overlay=draw_overlay)
    archive.start()
    for cycle in range(1, 13):
        archive.publish(make_result(cycle, "NOK", frame))
        wait_for(lambda: archive.images_written == cycle)
    total = sum(p.stat().st_size for p in archive.images_dir.glob("*.png"))
    assert 0 < total <= archive.quota_bytes
    assert archive.images_deleted > 0
    rows = archive.rows()
    kept = [row["cycle"] for row in rows if row["frame_path"]]
    assert kept == list(range(13 - len(kept), 13)), "the newest images are kept, the oldest deleted"
    assert len(rows) == 12, "deleting images never deletes results"
    archive.stop()
