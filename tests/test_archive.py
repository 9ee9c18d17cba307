"""The result archive: committed rows, NOK images + heatmaps written off the hot path, quota, restart."""

import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from disk_support import fill_disk, free_bytes, small_disk
from edge.runtime.archive import ResultArchive
from okcell.heatmap import overlay
from okcell.images import read_image
from okcell.names import Decision
from okcell.result import CellResult, InspectionResult


def draw_overlay(frame: np.ndarray, outcome: InspectionResult) -> np.ndarray:
    return overlay(frame, outcome.anomaly_map, outcome.threshold, outcome.decision, outcome.score)


def make_result(cycle: int, decision: Decision, frame: np.ndarray) -> CellResult:
    amap = None
    if decision != "ERROR":
        amap = cv2.GaussianBlur(np.random.default_rng(cycle).random(frame.shape[:2]).astype(np.float32), (0, 0), 5)
    score = None if decision == "ERROR" else (0.7 if decision == "NOK" else 0.2)
    outcome = InspectionResult(decision, score, 0.5, anomaly_map=amap, timings_ms={"inspect": 12.5},
                               error="no frame" if decision == "ERROR" else None)
    return CellResult(cycle, f"part-{cycle}", time.time(), "recipe-a", outcome, frame=frame)


def wait_for(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "archive image writer did not finish"
        time.sleep(0.02)


def test_rows_images_sampling_and_restart(tmp_path: Path):
    frame = cv2.resize(data.astronaut(), (160, 160))
    archive = ResultArchive(tmp_path / "archive", quota_mb=50, ok_sample_every=2, overlay=draw_overlay)
    archive.start()
    assert archive.issued == 0
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
    reopened.open()
    assert reopened.issued == 7
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


def test_ids_are_reserved_durably_and_a_crash_skips_the_rest_of_the_block(tmp_path: Path):
    archive = ResultArchive(tmp_path / "archive")
    archive.start()
    assert [archive.reserve(f"p{n}", time.time()) for n in range(3)] == [1, 2, 3]
    archive.publish(make_result(1, "OK", cv2.resize(data.astronaut(), (64, 64))))
    # killed here: no stop(). The next process opens the same database.
    restarted = ResultArchive(tmp_path / "archive")
    restarted.start()
    assert [(r.cycle, r.part_id) for r in restarted.unfinished()] == [(2, "p1"), (3, "p2")]
    assert restarted.issued == 1000, "ids reserved before the kill are never issued again"
    assert restarted.reserve(None, time.time()) == 1001
    assert restarted.unfinished()[-1].part_id == "1001", "self-triggered cycles are named by their id"
    restarted.stop()  # a clean stop gives the rest of the block back
    again = ResultArchive(tmp_path / "archive")
    again.start()
    assert again.issued == 1001 and again.reserve("next", time.time()) == 1002
    again.stop()


def test_low_free_space_drops_images_before_results(tmp_path: Path):
    """A disk of 2 MiB with a floor of 1.25 MiB: images make way (the oldest deleted first; once none is left, new ones
    are skipped) and every result is still archived. Without the floor the images fill the disk."""
    frame = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)  # PNG barely compresses it
    with small_disk(tmp_path / "disk", 2048) as disk:
        archive = ResultArchive(disk / "archive", overlay=draw_overlay, min_free_mb=1.25)
        archive.start()
        for cycle in range(1, 21):
            archive.publish(make_result(cycle, "NOK", frame))
            wait_for(lambda: archive.images_written + archive.images_skipped == cycle)
        assert archive.images_deleted > 0 and not archive.low_space, "old images made way for new ones"
        assert free_bytes(disk) >= 1.25 * 1024 * 1024
        kept = [row["frame_path"] for row in archive.rows() if row["frame_path"]]
        assert kept and all(Path(path).is_file() for path in kept)

        fill_disk(disk, leave_bytes=256 * 1024)  # something else takes the disk below the floor, even without images
        for cycle in range(21, 41):
            archive.publish(make_result(cycle, "NOK", frame))
            wait_for(lambda: archive.images_written + archive.images_skipped == cycle)
        assert archive.low_space and archive.images_skipped >= 20
        assert not list(archive.images_dir.glob("*.png")), "every image made way for results"
        assert [row["cycle"] for row in archive.rows()] == list(range(1, 41)), "every result is archived"
        archive.stop()
