"""The running cell: acquisition -> inference -> outputs, each stage a thread joined by bounded queues.

Every trigger gets exactly one :class:`~okcell.result.CellResult`: OK or NOK from a completed inspection, or
ERROR with the reason (no frame, camera lost, stage stalled, inspection failed, cell restarted). Result ids (= cycle
numbers) are reserved in the archive before they are handed out, so they are never reused, and a trigger accepted
before a crash is answered with ERROR "cell restarted" at the next start. Results go to the archive first
(committed) and only then to the other sinks; while the archive fails the cell is in Error and publishes nothing
(``edge.runtime.archive_guard``).

Control (thread-safe; this implements ``edge.runtime.control.CellControl``):
``request_trigger(part_id) -> cycle`` (software trigger), ``add_sink(sink)``, ``wait_result(cycle, timeout)``,
``reload_recipe()`` / ``activate_recipe(id)`` (a bad recipe, or one whose golden images do not reproduce, is refused,
the old one keeps running, no cycle lost; ``edge.runtime.recipe_switch``),
``start()``/``stop()`` (accept or refuse triggers), ``reset()``, ``status()``.
Lifecycle: ``startup()`` (camera, model, recipe, one warm-up inference, then ``READY=1``), ``shutdown()``
(``STOPPING=1``, queued triggers are processed, then the stages stop)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge.acquisition.replay_source import ReplaySource
from edge.acquisition.source import FrameSource, SourceError, SourceTimeout
from edge.runtime.archive import ArchiveError, ResultArchive
from edge.runtime.archive_guard import ArchiveGuard
from edge.runtime.cell_config import CellConfig
from okcell.names import CELL_STAGES, DECISIONS, CellState, Decision
from edge.runtime.control import CellStatus, TriggerRefused, check_part_id
from edge.runtime.recipe_switch import LoadedRecorder, selected_recipe
from edge.runtime.outputs import ResultSink
from okcell.result import CellResult, InspectionResult
from edge.runtime.sdnotify import SdNotifier
from edge.runtime.stages import STOP, Job, TimingWindow
from edge.runtime.watchdog import CellWatchdog, StageHeartbeat
from okcell.schema import ConfigError

log = logging.getLogger(__name__)
_IDLE_POLL_S = 0.2
_TRIGGER_BACKLOG = 1000
_RECENT_RESULTS = 1024
RESTARTED = "cell restarted before this trigger was finished"


@dataclass
class Inspection:
    """The loaded model + recipe: what the inference stage calls."""

    inspector: Any  # edge.runtime.inspector.Inspector
    recipe: Any  # okcell.recipe.Recipe
    recipe_dir: Path
    extractor: Any  # okcell.extractor.FeatureExtractor

    @property
    def recipe_id(self) -> str:
        return str(self.recipe.recipe_id)


def open_source(config: CellConfig) -> FrameSource:
    """The frame source the config describes (camera or replay)."""
    if config.camera is not None:
        from edge.acquisition.harvester_source import HarvesterSource

        return HarvesterSource(config.camera)
    assert config.replay is not None
    images = config.replay.images
    target: Path | list[Path] = images[0] if len(images) == 1 and images[0].is_dir() else images
    return ReplaySource(target, trigger_mode=config.trigger.mode, rate_hz=config.replay.rate_hz,
                        loop=config.replay.loop, config_source=str(config.path))


class CellService:
    """One inspection cell (see module docstring)."""

    def __init__(self, config: CellConfig, notifier: SdNotifier | None = None,
                 source: FrameSource | None = None) -> None:
        self.config = config
        self.notifier = notifier or SdNotifier()
        self.source = source or open_source(config)
        self.archive = ResultArchive(config.archive.directory, config.archive.quota_mb,
                                     config.archive.ok_sample_every, config.archive.sync, overlay=self._overlay,
                                     min_free_mb=config.archive.min_free_mb)
        self.guard = ArchiveGuard(self.archive, config.watchdog.reconnect_backoff_s, config.watchdog.recovery_attempts)
        self.sinks: list[ResultSink] = []
        self.timings = TimingWindow()
        self.counts: dict[Decision, int] = {decision: 0 for decision in DECISIONS}
        self.start_cycle = 0
        self.state: CellState = "Preoperational"
        self.error_text = ""
        self.camera_failed = False
        self._inspection: Inspection | None = None
        self._pending_inspection: Inspection | None = None
        self._extractor_lock = threading.Lock()  # the inference stage and a recipe switch's self-test share the model
        self._loaded = LoadedRecorder()
        self._cycle = 0
        self._cycle_lock = threading.Lock()
        self._accepting = False
        self._stopping = threading.Event()
        depth = config.queue_depth
        self._triggers: queue.Queue[Any] = queue.Queue(maxsize=_TRIGGER_BACKLOG)
        self._frames: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._results: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._late_errors: deque[tuple[CellResult, float]] = deque()
        self._heartbeats: dict[str, StageHeartbeat] = {stage: StageHeartbeat(stage, config.watchdog.budgets_s[stage]) for stage in CELL_STAGES}
        self._generation: dict[str, int] = {stage: 0 for stage in CELL_STAGES}
        self._in_flight: dict[str, Any] = {stage: None for stage in CELL_STAGES}
        self._threads: dict[str, threading.Thread] = {}
        self._done: OrderedDict[int, CellResult | None] = OrderedDict()  # None: claimed, not published yet
        self._done_lock = threading.Condition()
        self._status_lock = threading.Lock()
        self.watchdog = CellWatchdog(self.notifier, list(self._heartbeats.values()), self._health_text,
                                     self.recover_stage, config.watchdog.recovery_attempts,
                                     recovered=self._stages_recovered)

    # ---- lifecycle --------------------------------------------------------------------------------------

    def add_sink(self, sink: ResultSink) -> None:
        """Add an output (OPC UA server, PLC client...) before ``startup``; it gets every result after the archive."""
        self.sinks.append(sink)

    def startup(self) -> None:
        """Open the archive, check the camera (bad camera settings fail here, before the model is loaded), open model
        and recipe, run one warm-up inference, open the camera, start the stages, send READY=1."""
        self.state = "Initializing"
        self.notifier.status("starting: opening archive, checking camera, opening model, recipe, camera")
        self.archive.start()  # ConfigError naming the path if it is read-only or full
        self.start_cycle = self._cycle = self.archive.issued
        self.source.check()
        self._inspection = self._load_inspection(selected_recipe(self.config.recipe))
        self._log_setup(self._inspection)
        self._warm_up(self._inspection)
        self._record_loaded(self._inspection.recipe_dir, self._inspection.recipe_id)
        unfinished = self.archive.unfinished()
        if unfinished:
            log.warning("%d trigger(s) accepted before the restart were never finished (ids %d..%d): ERROR results",
                        len(unfinished), unfinished[0].cycle, unfinished[-1].cycle)
        for reservation in unfinished:  # published first, like any result, once the stages run
            self._emit_error(Job(reservation.cycle, reservation.part_id, reservation.time), RESTARTED)
        self.source.open()  # acquisition starts only now: no frame from before READY becomes a cycle
        for sink in self.sinks:
            sink.start()
        for stage in CELL_STAGES:
            self._start_stage(stage)
        self.watchdog.start()
        self._accepting = True
        self.state = "Operational"
        status = self._health_text()[1]
        self.notifier.ready(status)
        log.info("cell %s ready: %s", self.config.name, status)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop taking triggers, finish the queued ones, stop stages, sinks and archive."""
        self.notifier.stopping()
        self.state = "Halted"
        with self._cycle_lock:  # no trigger is queued after this
            self._accepting = False
        self._stopping.set()
        if self.source.trigger_mode == "software":
            self._put_trigger(STOP)
        deadline = time.monotonic() + timeout_s
        for stage in CELL_STAGES:
            thread = self._threads.get(stage)
            if thread is not None:
                thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self.watchdog.stop()
        for sink in self.sinks:
            try:
                sink.stop()
            except Exception:
                log.exception("sink %s did not stop cleanly", sink.name)
        self.source.close()
        self.archive.stop()
        if self._inspection is not None:
            self._inspection.extractor.close()
        log.info("cell stopped after cycle %d (%s)", self._cycle, self.counts)

    # ---- control (CellControl) ------------------------------------------------------------------------------

    def request_trigger(self, part_id: str) -> int:
        """Queue one software trigger; returns its result id (= cycle). Thread-safe. ``InvalidPartId`` if
        :func:`check_part_id` refuses ``part_id``."""
        check_part_id(part_id)
        if self.source.trigger_mode != "software":
            raise TriggerRefused(f"the cell runs in {self.source.trigger_mode} mode: the camera triggers, not requests")
        job = Job(0, part_id, time.time())
        with self._cycle_lock:
            if not self._accepting:
                raise TriggerRefused(f"the cell is {self.state}, not taking triggers")
            if self.guard.error:
                self.guard.refused += 1
                raise TriggerRefused(f"{self.guard.error}: no trigger is taken until the archive works again")
            if self._triggers.full():
                raise TriggerRefused(f"{_TRIGGER_BACKLOG} triggers are already waiting")
            try:
                job.cycle = self.guard.reserve(part_id, job.trigger_time)
            except ArchiveError as exc:
                raise TriggerRefused(f"archive failed: {exc}") from None
            self._triggers.put_nowait(job)  # not full (checked above; only this lock's holder adds triggers)
            self._cycle = job.cycle
        return job.cycle

    def wait_result(self, cycle: int, timeout_s: float = 30.0) -> CellResult | None:
        """The result of ``cycle`` once published (the last 1,024 cycles; without frame and anomaly map),
        or None after the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._done_lock:
            while self._done.get(cycle) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._done_lock.wait(left)
            return self._done[cycle]

    def start(self) -> None:
        if self.state == "Halted" and not self._stopping.is_set():
            self._accepting, self.state = True, "Operational"

    def stop(self) -> None:
        """Halt: refuse new triggers (queued ones still complete)."""
        self._accepting, self.state = False, "Halted"

    def reset(self) -> None:
        """Acknowledge an error: clear the watchdog's give-up and the error text."""
        self.watchdog.gave_up = None
        self.watchdog.attempts = {stage: 0 for stage in CELL_STAGES}
        self.error_text = ""
        self.guard.retry_now()
        if self.state == "Error":
            self.state = "Operational"

    def reload_recipe(self) -> str:
        """Reload the configured recipe folder, or the one ``.active`` names beside it (SIGHUP; see
        :mod:`edge.runtime.recipe_switch` and :meth:`activate_recipe`)."""
        return self._switch_recipe(selected_recipe(self.config.recipe))

    def activate_recipe(self, recipe_id: str) -> None:
        """Switch to the recipe folder named ``recipe_id`` beside the current one; ConfigError if unknown or bad."""
        available = self.available_recipes()
        if recipe_id not in available:
            raise ConfigError(f"recipe {recipe_id!r} not found in {self._recipes_root()}; available: {', '.join(available)}")
        self._switch_recipe(self._recipes_root() / recipe_id)

    def available_recipes(self) -> tuple[str, ...]:
        root = self._recipes_root()
        return tuple(sorted(p.name for p in root.iterdir()
                            if not p.name.startswith(".") and p.is_dir() and (p / "manifest.json").is_file()))

    def status(self) -> CellStatus:
        inspection = self._inspection
        state, error_text = self._reported_state()
        return CellStatus(
            state=state, error_text=error_text, camera_connected=self.source.stats.connected,
            backend=str(getattr(inspection.extractor, "backend_name", "")) if inspection else "",
            active_recipe=inspection.recipe_dir.name if inspection else "",
            available_recipes=self.available_recipes(), fetch_timeouts=self.source.stats.timeouts,
            reconnects=self.source.stats.reconnects, counts=dict(self.counts),
            cycle_p50_ms=self.timings.percentile("cycle", 50), cycle_p99_ms=self.timings.percentile("cycle", 99),
        )

    @property
    def cycle(self) -> int:
        return self._cycle

    @property
    def recipe_id(self) -> str:
        return self._inspection.recipe_id if self._inspection else ""

    # ---- watchdog hooks ----------------------------------------------------------------------------------

    def recover_stage(self, stage: str) -> bool:
        """Restart a stalled stage (called by the watchdog): its in-flight trigger becomes an ERROR result,
        a fresh thread takes over (acquisition reconnects first, inference re-opens model and recipe)."""
        self.state = "Error"
        self.error_text = f"stage {stage} stalled; restarting it"
        item, self._in_flight[stage] = self._in_flight[stage], None
        self._generation[stage] += 1
        self._heartbeats[stage].busy_since = None
        if isinstance(item, Job):
            self._emit_error(item, f"stage {stage} stalled past its {self._heartbeats[stage].budget_s:.1f} s budget")
        self._start_stage(stage, restarted=True)
        return True

    def _reported_state(self) -> tuple[CellState, str]:
        """State and error text as reported: Error while the archive fails (whatever else holds), every reason."""
        archive_error = self.guard.error
        state: CellState = "Error" if archive_error and self.state == "Operational" else self.state
        return state, "; ".join(text for text in (self.error_text, archive_error) if text)

    def _stages_recovered(self) -> None:
        """Every restarted stage works again: back to Operational if a stall was the cell's error."""
        if self.state == "Error" and self.error_text.startswith("stage "):
            self.state, self.error_text = "Operational", ""

    def _health_text(self) -> tuple[bool, str]:
        p99 = self.timings.percentile("cycle", 99)
        counts = self.counts
        camera = "connected" if self.source.stats.connected else "reconnecting"
        state, error_text = self._reported_state()
        text = (f"{state}; cycle {self._cycle}; OK {counts['OK']} NOK {counts['NOK']} ERROR {counts['ERROR']}; "
                f"p99 {'-' if p99 is None else f'{p99:.1f} ms'}")
        text += f"; camera {camera}"
        if self.archive.low_space:
            text += "; archive disk low: images skipped"
        if error_text:
            text += f"; {error_text}"
        return not self.camera_failed and not self.guard.given_up, text

    # ---- stages ------------------------------------------------------------------------------------------

    def _start_stage(self, stage: str, restarted: bool = False) -> None:
        target: Callable[[int, bool], None] = {
            "acquisition": self._acquisition_loop, "inference": self._inference_loop, "outputs": self._outputs_loop,
        }[stage]
        generation = self._generation[stage]
        thread = threading.Thread(target=target, args=(generation, restarted), daemon=True,
                                  name=f"okcell-{stage}-{generation}")
        self._threads[stage] = thread
        thread.start()

    def _current(self, stage: str, generation: int) -> bool:
        return self._generation[stage] == generation

    def _acquisition_loop(self, generation: int, restarted: bool) -> None:
        heartbeat = self._heartbeats["acquisition"]
        if restarted and not self._reconnect("restart after a stall", generation):
            return
        software = self.source.trigger_mode == "software"
        free_run = self.source.trigger_mode == "free_run"
        while self._current("acquisition", generation):
            if software:
                try:
                    job = self._triggers.get(timeout=_IDLE_POLL_S)
                except queue.Empty:
                    continue
                if job is STOP:
                    break
            else:
                if self._stopping.is_set():
                    break
                while free_run and self._inference_busy() and not self._stopping.is_set():
                    time.sleep(0.002)  # grab when inference can start on it at once: newest frame, least latency
                job = None
            heartbeat.begin()
            self._in_flight["acquisition"] = job
            lost: str | None = None
            try:
                job, lost = self._acquire(job)
            finally:
                heartbeat.end()
            if not self._current("acquisition", generation):
                return  # retired after a stall: the watchdog already answered this trigger
            self._in_flight["acquisition"] = None
            if job is not None:
                self._frames.put(job)
            if lost is not None and not self._reconnect(lost, generation):
                return
        if self._current("acquisition", generation):
            self._frames.put(STOP)

    def _inference_busy(self) -> bool:
        return not self._frames.empty() or self._heartbeats["inference"].busy_since is not None

    def _acquire(self, job: Job | None) -> tuple[Job | None, str | None]:
        """Grab the frame for a software trigger (job given) or the next self-triggered frame (job None)."""
        timeout = self.config.trigger.timeout_s
        part_id = job.part_id if job is not None else ""
        try:
            frame = self.source.grab(part_id, timeout)
        except SourceTimeout as exc:
            if job is not None:
                job.error = f"no frame: {exc}"
            return job, None
        except SourceError as exc:
            if job is not None:
                job.error = f"camera lost: {exc}"
            return job, str(exc)
        if job is not None:
            job.timings_ms["acquire"] = (frame.arrival_monotonic - job.trigger_monotonic) * 1000.0
        else:
            with self._cycle_lock:
                if self.guard.error:  # no id can be reserved: the frame is not inspected (counted in the error)
                    self.guard.refused += 1
                    return None, None
                try:
                    cycle = self.guard.reserve(None, frame.trigger_time)
                except ArchiveError:
                    return None, None
                self._cycle = cycle
            part = str(cycle)  # self-triggered (hardware/free-run) frames are named by their cycle
            frame.part_id = part
            job = Job(cycle, part, frame.trigger_time, trigger_monotonic=frame.arrival_monotonic)
        job.frame = frame
        return job, None

    def _reconnect(self, reason: str, generation: int) -> bool:
        """Close, re-discover and reopen the camera with backoff; triggers meanwhile become ERROR results."""
        first, longest = self.config.watchdog.reconnect_backoff_s
        delay, failures = first, 0
        log.warning("camera: %s; reconnecting", reason)
        self.error_text = f"camera lost ({reason}); reconnecting"
        if self.state == "Operational":
            self.state = "Error"
        while self._current("acquisition", generation):
            if self._fail_waiting_triggers(f"camera reconnecting after: {reason}"):
                self._frames.put(STOP)
                return False
            if self._stopping.is_set():
                self._frames.put(STOP)
                return False
            try:
                self.source.reconnect()
            except (SourceError, ConfigError, OSError) as exc:
                failures += 1
                self.camera_failed = failures >= self.config.watchdog.recovery_attempts
                log.warning("camera reconnect %d failed: %s (next try in %.1f s)", failures, exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, longest)
                continue
            self.camera_failed = False
            self.error_text = ""
            if self.state == "Error":
                self.state = "Operational"
            log.info("camera reconnected after %d failed attempt(s)", failures)
            return True
        return False

    def _fail_waiting_triggers(self, reason: str) -> bool:
        """Turn queued software triggers into ERROR jobs; True if the stop marker was among them."""
        stop_seen = False
        while True:
            try:
                job = self._triggers.get_nowait()
            except queue.Empty:
                return stop_seen
            if job is STOP:
                stop_seen = True
                continue
            job.error = reason
            self._frames.put(job)

    def _inference_loop(self, generation: int, restarted: bool) -> None:
        heartbeat = self._heartbeats["inference"]
        if restarted:
            try:
                assert self._inspection is not None
                self._inspection = self._load_inspection(self._inspection.recipe_dir)
            except Exception as exc:
                log.error("inference re-initialisation failed: %s", exc)
                self.error_text = f"inference re-initialisation failed: {exc}"
        while self._current("inference", generation):
            job = self._frames.get()
            if job is STOP:
                self._results.put(STOP)
                return
            if self._pending_inspection is not None:
                self._inspection, self._pending_inspection = self._pending_inspection, None
            inspection = self._inspection
            assert inspection is not None
            heartbeat.begin()
            self._in_flight["inference"] = job
            try:
                with self._extractor_lock:
                    result = self._inspect(job, inspection)
            finally:
                heartbeat.end()
            if not self._current("inference", generation):
                return
            self._in_flight["inference"] = None
            self._results.put(result)

    def _inspect(self, job: Job, inspection: Inspection) -> tuple[CellResult, float]:
        """Inspect one job; returns the result and the monotonic time its cycle started (frame arrival)."""
        threshold = float(inspection.recipe.threshold)
        started = time.monotonic()
        job.timings_ms["wait"] = (started - job.start_monotonic) * 1000.0
        if job.error is not None or job.frame is None:
            outcome = InspectionResult("ERROR", None, threshold, error=job.error or "no frame")
        else:
            try:
                outcome = inspection.inspector.inspect(job.frame.image)
            except Exception as exc:  # the inspector should not raise; if it does, the part is still not OK
                log.exception("inspection of cycle %d raised", job.cycle)
                outcome = InspectionResult("ERROR", None, threshold, error=f"inspection failed: {exc}")
        outcome.timings_ms = {**outcome.timings_ms, **job.timings_ms, "inspect": (time.monotonic() - started) * 1000.0}
        result = CellResult(cycle=job.cycle, part_id=job.part_id, timestamp=job.trigger_time,
                            recipe_id=inspection.recipe_id, inspection=outcome,
                            frame=job.frame.image if job.frame is not None else None)
        return result, job.start_monotonic

    def _emit_error(self, job: Job, reason: str) -> None:
        """An ERROR result for a job whose stage was restarted, straight to the outputs stage."""
        threshold = float(self._inspection.recipe.threshold) if self._inspection else float("nan")
        outcome = InspectionResult("ERROR", None, threshold, error=reason, timings_ms=dict(job.timings_ms))
        result = CellResult(cycle=job.cycle, part_id=job.part_id, timestamp=job.trigger_time,
                            recipe_id=self.recipe_id, inspection=outcome)
        self._late_errors.append((result, job.start_monotonic))

    def _outputs_loop(self, generation: int, restarted: bool) -> None:
        heartbeat = self._heartbeats["outputs"]
        while self._current("outputs", generation):
            if self.guard.retry_due():
                self._retry_archive(heartbeat)
            item: Any
            if self._late_errors:
                item = self._late_errors.popleft()
            else:
                try:
                    item = self._results.get(timeout=_IDLE_POLL_S)
                except queue.Empty:
                    continue
            if item is STOP:
                while self._late_errors:
                    result, started = self._late_errors.popleft()
                    self._publish(result, started, heartbeat)
                for result in self.guard.close():
                    self._deliver(result)
                return
            result, started = item
            self._publish(result, started, heartbeat)

    def _publish(self, result: CellResult, started: float, heartbeat: StageHeartbeat) -> None:
        """Archive, then (only if archived) publish one result; see :class:`ArchiveGuard` for a failing archive."""
        with self._done_lock:
            if result.cycle in self._done:
                return  # already answered (e.g. by the watchdog while its stage was stalled)
            self._done[result.cycle] = None
            while len(self._done) > _RECENT_RESULTS:
                self._done.popitem(last=False)
        heartbeat.begin()
        self._in_flight["outputs"] = result
        result.inspection.timings_ms["cycle"] = (time.monotonic() - started) * 1000.0
        if self.guard.commit(result):
            self._deliver(result)
        self._in_flight["outputs"] = None
        heartbeat.end()

    def _retry_archive(self, heartbeat: StageHeartbeat) -> None:
        heartbeat.begin()
        for result in self.guard.retry():
            self._deliver(result)
        heartbeat.end()

    def _deliver(self, result: CellResult) -> None:
        """Count and hand an archived result to the sinks; wait_result sees it from now on."""
        for name, ms in result.inspection.timings_ms.items():
            self.timings.add(name, ms)
        with self._status_lock:
            self.counts[result.decision] += 1
        for sink in self.sinks:
            try:
                sink.publish(result)
            except Exception:
                log.exception("sink %s failed on cycle %d", sink.name, result.cycle)
        result.frame = None  # the archive's image writer holds its own reference while it needs it
        # kept for wait_result without the big arrays (sinks and the archive writer have the full result)
        light = replace(result, frame=None, inspection=replace(result.inspection, anomaly_map=None))
        with self._done_lock:
            if result.cycle in self._done:
                self._done[result.cycle] = light
            self._done_lock.notify_all()

    # ---- model and recipe ------------------------------------------------------------------------------------

    def _load_inspection(self, recipe_dir: Path, extractor: Any = None) -> Inspection:
        """Open the recipe in ``recipe_dir`` and the model (unless ``extractor`` is given: a recipe switch keeps the
        running model). Raises ConfigError naming the file if either is bad."""
        from okcell.recipe import Recipe
        from edge.runtime.inspector import Inspector
        from okcell.sidecar import load_verified

        model = self.config.model
        sidecar = load_verified(model.onnx)
        recipe = Recipe.load(recipe_dir, sidecar, threads=model.threads or -1, public_key=self.config.recipe_public_key)
        if extractor is None:
            extractor = self._open_extractor()
        return Inspection(Inspector(extractor, recipe), recipe, Path(recipe_dir), extractor)

    def _open_extractor(self) -> Any:
        from edge.backends.select import open_extractor

        model = self.config.model
        return open_extractor(model.onnx, backend=model.backend, engine_path=model.engine, threads=model.threads)

    def _log_setup(self, inspection: Inspection) -> None:
        """One line each for the model, recipe and archive in use (the backend's line comes from its selection)."""
        log.info("model %s: sha256 %s…", self.config.model.onnx, inspection.extractor.sidecar.sha256[:12])
        log.info("recipe %s (id %s): %s, threshold %.6g", inspection.recipe_dir.name, inspection.recipe_id,
                 inspection.recipe_dir, inspection.recipe.threshold)
        archive = self.config.archive
        log.info("archive %s (sync %s, images up to %g MB)", archive.directory, archive.sync, archive.quota_mb)

    def _warm_up(self, inspection: Inspection) -> None:
        """One inference on a grey frame of the recipe's size and channels; an ERROR here fails startup."""
        recipe = inspection.recipe
        height, width = recipe.image_size
        if recipe.roi is not None:
            height, width = recipe.roi.y + recipe.roi.height, recipe.roi.x + recipe.roi.width
        shape = (height, width) if recipe.channels == "mono" else (height, width, 3)
        outcome = inspection.inspector.inspect(np.full(shape, 128, np.uint8))
        if outcome.decision == "ERROR":
            raise ConfigError(f"{inspection.recipe_dir}: warm-up inference failed: {outcome.error}")

    def _switch_recipe(self, recipe_dir: Path) -> str:
        """Load a recipe beside the running one (same model) and run the golden images it carries
        (:mod:`edge.runtime.golden`; between two cycles); the inference stage switches to it at the next cycle."""
        from edge.runtime.golden import check_recipe
        from edge.runtime.inspector import Inspector

        assert self._inspection is not None
        try:
            candidate = self._load_inspection(recipe_dir, extractor=self._inspection.extractor)
            with self._extractor_lock:
                checked = check_recipe(Inspector(candidate.extractor, candidate.recipe, heatmap=False), recipe_dir)
        except Exception as exc:
            log.error("recipe %s refused, keeping %s: %s", recipe_dir, self.recipe_id, exc)
            self._record_loaded(Path(recipe_dir), "", str(exc) or type(exc).__name__)
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{recipe_dir}: recipe refused: {exc}") from exc
        self._pending_inspection = candidate
        self._record_loaded(Path(recipe_dir), candidate.recipe_id)
        selftest = f"; self-test: {len(checked)} golden image(s) passed" if checked else ""
        log.info("recipe %s loaded%s; active from the next cycle", candidate.recipe_id, selftest)
        return candidate.recipe_id

    def _record_loaded(self, recipe_dir: Path, recipe_id: str, error: str = "") -> None:
        """Tell ``okcell recipe push`` what was loaded (``.loaded.json``); a failure to write is only logged."""
        try:
            self._loaded.record(recipe_dir, recipe_id, error)
        except OSError as exc:
            log.warning("cannot record the recipe load in %s: %s", recipe_dir.parent, exc)

    def _overlay(self, frame: np.ndarray, outcome: InspectionResult) -> np.ndarray:
        """The archived heatmap: anomaly map blended into the active recipe's ROI (BGR)."""
        from okcell.heatmap import overlay

        roi = self._inspection.recipe.roi if self._inspection else None
        box = (roi.x, roi.y, roi.width, roi.height) if roi is not None else None
        return overlay(frame, outcome.anomaly_map, outcome.threshold, outcome.decision, outcome.score, roi=box,
                       label=outcome.nearest_label)

    def _recipes_root(self) -> Path:
        current = self._inspection.recipe_dir if self._inspection else self.config.recipe
        return Path(current).parent

    def _put_trigger(self, item: Any) -> None:
        try:
            self._triggers.put(item, timeout=5)
        except queue.Full:
            log.error("trigger queue full at shutdown")
