"""The running cell against the real viky camera (harvesters), the real model and recipe, a real notify socket."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import TypeGuard

import pytest

from edge.acquisition.harvester_source import HarvesterSource
from okcell.result import CellResult
from edge.runtime.service import CellService
from okcell.schema import ConfigError
from service_support import NotifyListener, capture_viky_frames, ready_process, viky_camera, write_cell_config


@pytest.fixture(scope="module")
def recipes(exported_model: Path, demo_recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of recipes: ``demo`` (colour, 256 px demo parts) and ``viky-mono`` (calibrated on viky Mono8 frames)."""
    from calibration.build import CalibrationSettings, calibrate
    from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor

    root = tmp_path_factory.mktemp("cell-recipes")
    shutil.copytree(demo_recipe, root / "demo")
    frames = capture_viky_frames(root.parent / "viky-mono-frames", "Mono8", 10)
    extractor = OnnxRuntimeExtractor(exported_model)
    try:
        calibrate(extractor, exported_model, CalibrationSettings(ok_dir=frames, folds=2), root / "viky-mono")
    finally:
        extractor.close()
    return root


def run_until(service: CellService, cycles: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while service.cycle - service.start_cycle < cycles:
        assert time.monotonic() < deadline, f"only {service.cycle - service.start_cycle} cycles in {timeout_s} s"
        time.sleep(0.05)


def all_present(results: list[CellResult | None]) -> TypeGuard[list[CellResult]]:
    """Every trigger got its result (none timed out)."""
    return all(r is not None for r in results)


def assert_archive_matches(service: CellService, expected_cycles: list[int]) -> list[dict]:
    """Exactly one archived result per trigger, and the service's counters agree with the database."""
    rows = service.archive.rows(since_cycle=service.start_cycle)
    assert [row["cycle"] for row in rows] == expected_cycles
    counts = {d: sum(1 for row in rows if row["decision"] == d) for d in ("OK", "NOK", "ERROR")}
    assert counts == service.counts
    return rows


def test_free_run_300_frames_rgba8(exported_model, recipes, tmp_path):
    config = write_cell_config(tmp_path, exported_model, recipes / "demo", {"camera": viky_camera("RGBa8")}, "free_run")
    service = CellService(config)
    service.startup()
    try:
        run_until(service, 300, timeout_s=240)
    finally:
        service.shutdown()
    last = service.cycle
    rows = ResultArchiveReader.rows(config, service.start_cycle)
    assert [row["cycle"] for row in rows] == list(range(service.start_cycle + 1, last + 1))
    assert {row["decision"] for row in rows} <= {"OK", "NOK"}, [row["error"] for row in rows if row["error"]]
    counts = {d: sum(1 for row in rows if row["decision"] == d) for d in ("OK", "NOK", "ERROR")}
    assert counts == service.counts and sum(counts.values()) >= 300
    assert service.source.stats.frames == len(rows)
    summary = service.timings.summary()
    assert {"cycle", "inspect", "wait"} <= set(summary)


class ResultArchiveReader:
    @staticmethod
    def rows(config, since_cycle: int) -> list[dict]:
        from edge.runtime.archive import ResultArchive

        archive = ResultArchive(config.archive.directory)
        try:
            return archive.rows(since_cycle)
        finally:
            archive.stop()


def test_software_triggers_mono8_ready_after_warm_up(exported_model, recipes, tmp_path, monkeypatch):
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    config = write_cell_config(tmp_path / "cell", exported_model, recipes / "viky-mono",
                               {"camera": viky_camera("Mono8")}, "software")
    service = CellService(config)
    assert listener.poll() == []
    service.startup()
    startup_messages = listener.poll()
    assert startup_messages[0].startswith("STATUS=starting")
    assert startup_messages[-1].startswith("READY=1\nSTATUS=Operational; cycle 0")
    assert sum("READY=1" in m for m in startup_messages) == 1
    try:
        ids = [service.request_trigger(f"P{i:03d}") for i in range(100)]
        results = [service.wait_result(cycle, timeout_s=60) for cycle in ids]
    finally:
        service.shutdown()
    assert ids == list(range(service.start_cycle + 1, service.start_cycle + 101))
    assert all_present(results)
    assert [r.part_id for r in results] == [f"P{i:03d}" for i in range(100)]
    assert {r.decision for r in results} <= {"OK", "NOK"}, {r.inspection.error for r in results}
    # The 10 references (every 3rd frame) cover only part of the ball's path: live scores run 0.03-0.36 around a
    # threshold of 0.13 (41 OK measured with the leave-one-out threshold). Many OK shows that calibration and the cell
    # turn Mono8 frames into the same input: a mismatch scores every frame far above the threshold.
    assert sum(r.decision == "OK" for r in results) >= 20
    rows = assert_archive_matches(service, ids)
    assert rows[0]["recipe_id"] == results[0].recipe_id
    assert "STOPPING=1" in listener.poll()
    listener.close()


def test_device_loss_gives_error_results_then_reconnects(exported_model, recipes, tmp_path):
    config = write_cell_config(tmp_path, exported_model, recipes / "demo", {"camera": viky_camera("RGBa8")}, "software",
                               watchdog={"reconnect_backoff_s": [0.2, 1.0]})
    service = CellService(config)
    service.startup()
    ids: list[int] = []
    try:
        ids += [service.request_trigger(f"before-{i}") for i in range(10)]
        assert service.wait_result(ids[-1], 60) is not None
        camera = service.source
        assert isinstance(camera, HarvesterSource) and camera.acquirer is not None
        camera.acquirer.destroy()  # the device goes away under the running loop
        ids += [service.request_trigger(f"during-{i}") for i in range(10)]
        assert service.wait_result(ids[-1], 60) is not None
        deadline = time.monotonic() + 30
        while not service.source.stats.connected:
            assert time.monotonic() < deadline, "camera did not reconnect"
            time.sleep(0.05)
        ids += [service.request_trigger(f"after-{i}") for i in range(10)]
        results = [service.wait_result(cycle, 60) for cycle in ids]
    finally:
        service.shutdown()
    assert all_present(results), "a trigger was lost"
    decisions = [r.decision for r in results]
    assert "ERROR" not in decisions[:10] and "ERROR" not in decisions[-10:]
    errors = [r.inspection.error for r in results if r.decision == "ERROR"]
    assert errors and all(e is not None and "camera" in e for e in errors), errors
    assert service.source.stats.losses >= 1 and service.source.stats.reconnects >= 1
    assert_archive_matches(service, ids)


class BlockingSink:
    """An output that hangs (a stuck network peer): the outputs stage stalls on it."""

    name = "stuck-plc"

    def __init__(self, hang_from_cycle: int) -> None:
        self.hang_from_cycle = hang_from_cycle
        self.release = threading.Event()
        self.published: list[int] = []

    def start(self) -> None:
        pass

    def publish(self, result: CellResult) -> None:
        self.published.append(result.cycle)
        if result.cycle >= self.hang_from_cycle:
            self.release.wait()

    def stop(self) -> None:
        self.release.set()


def test_stalled_stage_stops_watchdog_and_names_the_stage(exported_model, recipes, demo_images, tmp_path, monkeypatch):
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # check and feed every 0.2 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    replay = {"replay": {"images": str(demo_images / "holdout" / "ok")}}
    config = write_cell_config(tmp_path / "cell", exported_model, recipes / "demo", replay, "software",
                               watchdog={"budgets_s": {"outputs": 0.5}, "recovery_attempts": 1})
    service = CellService(config)
    sink = BlockingSink(hang_from_cycle=3)
    service.add_sink(sink)
    service.startup()
    try:
        first = [service.request_trigger(f"ok-{i}") for i in range(2)]
        assert all(service.wait_result(c, 60) for c in first)
        assert any(m.startswith("WATCHDOG=1") for m in listener.poll(wait_s=0.5))
        service.request_trigger("hangs")  # the outputs stage stalls on it and is restarted ...
        service.request_trigger("hangs-again")  # ... and the restarted stage stalls too: recovery failed
        time.sleep(3.0)  # 2 x (budget 0.5 s + detection) + give-up
        listener.poll()
        stalled = listener.poll(wait_s=1.0)
        assert stalled and not any("WATCHDOG=1" in m for m in stalled), stalled
        assert any("stage outputs" in m for m in stalled), stalled
        assert service.watchdog.gave_up == "outputs"
    finally:
        sink.release.set()
        service.shutdown(timeout_s=10)
    listener.close()


def test_recipe_reload_keeps_every_cycle_and_refuses_a_bad_recipe(exported_model, recipes, demo_images, tmp_path):
    local = tmp_path / "recipes"
    shutil.copytree(recipes / "demo", local / "demo")
    shutil.copytree(recipes / "viky-mono", local / "viky-mono")
    replay = {"replay": {"images": str(demo_images / "holdout" / "ok")}}
    config = write_cell_config(tmp_path / "cell", exported_model, local / "demo", replay, "software")
    service = CellService(config)
    service.startup()
    ids: list[int] = []
    stop = threading.Event()

    def trigger_continuously() -> None:
        while not stop.is_set():
            ids.append(service.request_trigger(f"part-{len(ids)}"))
            time.sleep(0.02)

    feeder = threading.Thread(target=trigger_continuously)
    feeder.start()
    try:
        old_id = service.recipe_id
        assert service.available_recipes() == ("demo", "viky-mono")
        time.sleep(0.5)
        assert service.reload_recipe() == old_id  # SIGHUP path, same folder
        manifest = local / "demo" / "manifest.json"
        manifest.write_text(manifest.read_text().replace('"threshold"', '"thresh0ld"', 1))
        with pytest.raises(ConfigError, match="manifest.json"):
            service.reload_recipe()
        with pytest.raises(ConfigError, match="recipe 'nope' not found.*demo, viky-mono"):
            service.activate_recipe("nope")
        time.sleep(0.5)
        assert service.recipe_id == old_id  # the bad one was refused, the old one runs
        service.activate_recipe("viky-mono")
        time.sleep(1.0)
    finally:
        stop.set()
        feeder.join()
        last = [service.wait_result(c, 60) for c in ids]
        service.shutdown()
    assert all_present(last), "a cycle was lost across the recipe switches"
    recipe_ids = [r.recipe_id for r in last]
    assert recipe_ids[0] == old_id and recipe_ids[-1] != old_id
    switched = recipe_ids.index(recipe_ids[-1])
    assert all(r.decision == "ERROR" and "mono" in (r.inspection.error or "") for r in last[switched:]), \
        "colour frames on a mono recipe are ERROR, never OK"
    assert_archive_matches(service, ids)


def test_shutdown_finishes_queued_triggers_and_cycles_continue(exported_model, recipes, demo_images, tmp_path):
    replay = {"replay": {"images": str(demo_images / "holdout" / "ok")}}
    config = write_cell_config(tmp_path, exported_model, recipes / "demo", replay, "software")
    service = CellService(config)
    service.startup()
    ids = [service.request_trigger(f"queued-{i}") for i in range(12)]
    service.shutdown()
    assert_archive_matches(service, ids)
    again = CellService(config)
    again.startup()
    try:
        assert again.start_cycle == ids[-1]
        assert again.request_trigger("next") == ids[-1] + 1
    finally:
        again.shutdown()


def test_short_soak_memory_stays_flat(exported_model, recipes, tmp_path):
    """A short run of benchmarks/soak.py (2,000 cycles there) in its own process: RSS growth after warm-up < 5 %."""
    import subprocess
    import sys

    config = write_cell_config(tmp_path, exported_model, recipes / "viky-mono", {"camera": viky_camera("Mono8")},
                               "software")
    soak = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"
    done = subprocess.run([sys.executable, str(soak), "--config", str(config.path), "--cycles", "100", "--warmup", "200"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "soak: 100 cycles" in done.stdout and "ERROR results 0" in done.stdout
    assert "growth" in done.stdout


def test_okcell_run_process_under_a_notify_socket(exported_model, recipes, demo_images, tmp_path):
    """``okcell run`` as systemd starts it: READY=1, STATUS, SIGHUP reload, SIGTERM drains and exits 0."""
    import signal
    import sys

    replay = {"replay": {"images": str(demo_images / "holdout" / "ok"), "rate_hz": 5}}
    config = write_cell_config(tmp_path / "cell", exported_model, recipes / "demo", replay, "free_run")
    okcell = Path(sys.executable).parent / "okcell"
    with ready_process([str(okcell), "run", "--config", str(config.path)], tmp_path / "notify.sock",
                       env={"WATCHDOG_USEC": "1000000"}) as (process, listener):
        time.sleep(2.0)
        process.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        messages = listener.all
    assert process.returncode == 0, output
    assert "recipe" in output and "reloaded" in output
    assert any(m.startswith("WATCHDOG=1\nSTATUS=Operational; cycle ") for m in messages)
    assert messages[-1] == "STOPPING=1" or "STOPPING=1" in messages
    rows = ResultArchiveReader.rows(config, 0)
    assert len(rows) >= 5 and {row["decision"] for row in rows} <= {"OK", "NOK"}


def test_stalled_acquisition_is_restarted_and_reconnects(exported_model, recipes, tmp_path, monkeypatch):
    """A camera that hangs (1 frame/s, acquisition budget 0.3 s): the trigger becomes ERROR, the stage restarts
    with a reconnect, and the watchdog is fed again once it is healthy."""
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    camera = viky_camera("RGBa8")
    camera["features"].append({"AcquisitionFrameRate": 1.0})
    config = write_cell_config(tmp_path / "cell", exported_model, recipes / "demo", {"camera": camera}, "software",
                               trigger={"mode": "software", "timeout_s": 5.0},
                               watchdog={"budgets_s": {"acquisition": 0.3}, "recovery_attempts": 2})
    service = CellService(config)
    service.startup()
    try:
        time.sleep(1.5)  # let the first frame of the slow camera go by
        listener.poll()
        cycle = service.request_trigger("hung")
        result = service.wait_result(cycle, timeout_s=30)
        assert result is not None and result.decision == "ERROR"
        assert "stage acquisition stalled" in (result.inspection.error or "")
        during = listener.poll()
        assert any("stage acquisition stalled" in m for m in during), during
        deadline = time.monotonic() + 30
        while service.source.stats.reconnects < 1 or not service.source.stats.connected:
            assert time.monotonic() < deadline, "acquisition was not reconnected"
            time.sleep(0.05)
        listener.poll()
        assert any(m.startswith("WATCHDOG=1") for m in listener.poll(wait_s=1.0)), "not healthy again"
        assert service.watchdog.gave_up is None
    finally:
        service.shutdown(timeout_s=10)
    assert_archive_matches(service, [cycle])
    listener.close()
