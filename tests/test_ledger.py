"""The cell's ledger: every accepted trigger has exactly one result, result ids are never reused, nothing is
published that is not archived. Real ``okcell run`` processes, real SQLite on real (small) file systems."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any, Iterator

import pytest
from asyncua import ua

from disk_support import fill_disk, read_only_file, remount_read_only, small_disk
from edge.runtime.archive import ResultArchive
from edge.runtime.control import TriggerRefused
from edge.runtime.service import CellService
from okcell.result import CellResult
from opcua_support import EventCollector, PASSWORD_HASH, USER, cell_node, connect, free_port, subscribe_results, var
from service_support import CellProcess, NotifyListener, write_cell_config



def replay_ok(demo_images: Path) -> dict[str, Any]:
    return {"replay": {"images": str(demo_images / "holdout" / "ok")}}


def archive_rows(directory: Path) -> dict[int, dict[str, Any]]:
    with closing(sqlite3.connect(directory / "results.sqlite")) as db:
        db.row_factory = sqlite3.Row
        return {row["cycle"]: dict(row) for row in db.execute("SELECT * FROM results")}


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    notify = NotifyListener(tmp_path / "notify.sock")
    yield notify
    notify.close()


# ---- ids and restarts ------------------------------------------------------------------------------------------


async def trigger_parts(url: str, parts: list[str]) -> dict[int, str]:
    """Call Trigger once per part; {result id: part id} as the cell answered."""
    client = await connect(url)
    try:
        cell, idx = await cell_node(client)
        method = ua.QualifiedName("Trigger", idx)
        ids: dict[int, str] = {}
        for part in parts:
            result_id = int(await cell.call_method(method, ua.Variant(part, ua.VariantType.String)))
            assert result_id not in ids, f"result id {result_id} handed out twice in one run"
            ids[result_id] = part
        return ids
    finally:
        await client.disconnect()


async def trigger_and_collect(url: str, parts: list[str]) -> tuple[dict[int, str], list[Any], int]:
    """Subscribe to ResultReady, trigger ``parts``, wait for their events; also read Diagnostics.CountERROR."""
    client = await connect(url)
    try:
        _, idx = await cell_node(client)
        collector = EventCollector()
        await subscribe_results(client, idx, collector)
        ids = await trigger_parts(url, parts)
        deadline = time.monotonic() + 120
        while not set(ids) <= {event.ResultId for event in collector.events} and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        errors = int(await var(client, idx, "Diagnostics.CountERROR").read_value())
        return ids, [event for event in collector.events if event.ResultId in ids], errors
    finally:
        await client.disconnect()


def test_sigkill_never_reuses_ids_and_every_accepted_trigger_gets_one_result(
        exported_model: Path, demo_recipe: Path, demo_images: Path, tmp_path: Path, listener: NotifyListener) -> None:
    port = free_port()
    opcua = {"endpoint": f"opc.tcp://127.0.0.1:{port}/okcell", "security": ["None"],
             "users": [{"name": USER, "password_hash": PASSWORD_HASH}]}
    config = write_cell_config(tmp_path / "cell", exported_model, demo_recipe, replay_ok(demo_images), "software",
                               opcua=opcua)
    url = f"opc.tcp://127.0.0.1:{port}/okcell"
    first = CellProcess(config.path, listener)
    try:
        assert first.ready_or_exit(), first.text
        before = asyncio.run(trigger_parts(url, [f"before-{n}" for n in range(30)]))
        first.process.send_signal(signal.SIGKILL)  # accepted triggers are still queued (each takes an inference)
        assert first.wait() == -signal.SIGKILL
    finally:
        first.kill()
    unfinished = set(before) - set(archive_rows(config.archive.directory))
    assert unfinished, "the kill came after every trigger was answered: the test did not exercise a restart"

    second = CellProcess(config.path, listener)
    try:
        assert second.ready_or_exit(), second.text
        after, events, errors_published = asyncio.run(trigger_and_collect(url, [f"after-{n}" for n in range(10)]))
        second.process.send_signal(signal.SIGTERM)
        assert second.wait() == 0, second.text
    finally:
        second.kill()

    assert not set(after) & set(before), f"ids reused after the restart: {sorted(set(after) & set(before))}"
    assert min(after) > max(before)
    assert sorted(event.ResultId for event in events) == sorted(after), "one ResultReady per new trigger"
    rows = archive_rows(config.archive.directory)
    assert sorted(rows) == sorted({**before, **after}), "exactly one archived result per accepted trigger, no other"
    for result_id, part in {**before, **after}.items():
        assert rows[result_id]["part_id"] == part, f"result {result_id} belongs to {part}"
    for result_id in unfinished:
        assert rows[result_id]["decision"] == "ERROR" and "cell restarted" in rows[result_id]["error"]
    assert {rows[i]["decision"] for i in after} <= {"OK", "NOK"}
    assert errors_published == len(unfinished), "each 'cell restarted' result was published like any other"


# ---- archive not writable at start -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["read-only folder", "read-only database", "full"])
def test_unwritable_archive_at_start_is_a_startup_error(
        fault: str, exported_model: Path, demo_recipe: Path, demo_images: Path, tmp_path: Path,
        listener: NotifyListener) -> None:
    with small_disk(tmp_path / "disk", 4096) as disk, ExitStack() as faults:
        directory = disk / "archive"
        config = write_cell_config(tmp_path / "cell", exported_model, demo_recipe, replay_ok(demo_images), "software",
                                   archive={"directory": str(directory), "min_free_mb": 2})
        existing = ResultArchive(directory)  # an archive from an earlier run
        existing.start()
        existing.stop()
        if fault == "read-only folder":
            remount_read_only(disk)
        elif fault == "read-only database":  # SQLite would quietly open it read-only
            faults.enter_context(read_only_file(directory / "results.sqlite"))
        else:
            fill_disk(disk, leave_bytes=1024 * 1024)
        cell = CellProcess(config.path, listener)
        try:
            assert not cell.ready_or_exit(), f"READY=1 with a {fault} archive: {cell.text}"
        finally:
            cell.kill()
    assert cell.process.returncode == 2, cell.text
    message = cell.text
    assert "okcell run: error:" in message and "Traceback" not in message, message
    if fault == "full":
        assert f"{directory}: archive disk full" in message and "min_free_mb is 2" in message, message
    elif fault == "read-only folder":
        assert f"{directory}: the archive folder is read-only" in message, message
    else:
        assert f"{directory / 'results.sqlite'}: the archive cannot be written" in message, message
        assert "readonly" in message, message


# ---- archive failing while the cell runs -----------------------------------------------------------------------


class FillingSink:
    """An output that records what it was given and, on the first result, fills the archive's disk (another
    program writing a large file at the wrong moment)."""

    name = "filling"

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.published: list[CellResult] = []
        self.filler: Path | None = None

    def start(self) -> None:
        pass

    def publish(self, result: CellResult) -> None:
        self.published.append(result)
        if self.filler is None:
            self.filler = fill_disk(self.disk)

    def stop(self) -> None:
        pass


def test_failing_archive_publishes_nothing_unarchived_and_stops_the_watchdog(
        exported_model: Path, demo_recipe: Path, demo_images: Path, tmp_path: Path, listener: NotifyListener,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # check and feed every 0.2 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with small_disk(tmp_path / "disk", 8192) as disk:
        config = write_cell_config(tmp_path / "cell", exported_model, demo_recipe, replay_ok(demo_images), "software",
                                   archive={"directory": str(disk / "archive"), "min_free_mb": 1},
                                   watchdog={"recovery_attempts": 2, "reconnect_backoff_s": [0.2, 0.4]})
        service = CellService(config)
        sink = FillingSink(disk)
        service.add_sink(sink)
        service.startup()
        try:
            ids = [service.request_trigger(f"part-{n}") for n in range(5)]
            deadline = time.monotonic() + 120
            while not (service.status().state == "Error" and service.watchdog.last_health.healthy is False):
                assert time.monotonic() < deadline, f"the cell did not notice: {service.status()}"
                time.sleep(0.05)
            status = service.status()
            assert "archive" in status.error_text and str(disk / "archive") in status.error_text, status
            archived = archive_rows(disk / "archive")
            assert [r.cycle for r in sink.published] == [ids[0]], "only the result archived before the disk filled"
            assert all(r.cycle in archived for r in sink.published), "a result was published unarchived"
            with pytest.raises(TriggerRefused, match="archive"):
                service.request_trigger("while-full")
            listener.poll()
            withheld = listener.poll(wait_s=1.0)
            assert withheld and not any("WATCHDOG=1" in m for m in withheld), withheld
            assert any("archive" in m for m in withheld), withheld

            assert sink.filler is not None
            sink.filler.unlink()  # space freed: the held results are archived, then published, in order
            results = [service.wait_result(cycle, timeout_s=60) for cycle in ids]
            assert all(r is not None for r in results), "a result was lost"
            deadline = time.monotonic() + 30
            while not any(m.startswith("WATCHDOG=1") for m in listener.poll()):
                assert time.monotonic() < deadline, "the watchdog was not fed again after the archive recovered"
            assert service.status().state == "Operational"
            assert service.request_trigger("after") == ids[-1] + 1
        finally:
            service.shutdown()
        archived = archive_rows(disk / "archive")
    assert [r.cycle for r in sink.published] == ids + [ids[-1] + 1], "every result published once, in order"
    assert all(r.cycle in archived and archived[r.cycle]["part_id"] == r.part_id for r in sink.published)
