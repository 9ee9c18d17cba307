"""Acceptance on the real pipeline: replayed demo parts -> DINOv2 (ONNX Runtime) -> demo recipe -> archive -> OPC UA,
with a real asyncua client on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from asyncua import ua
from asyncua.ua.uaerrors import UaStatusCodeError

from edge.deploy.selftest import add_recipe_golden
from edge.runtime.golden import GOLDEN_FILE
from okcell.recipe import BANK_FILE
from edge.runtime.cell_config import load_cell_config
from edge.runtime.control import InvalidPartId
from edge.opcua.server import OpcUaServer
from edge.runtime.service import CellService
from opcua_support import PASSWORD_HASH, USER, EventCollector, cell_node, connect, free_port, session, subscribe_results, var


def write_config(root: Path, model: Path, images: list[Path], port: int) -> Path:
    data: dict[str, Any] = {
        "name": "opcua-cell",
        "state_dir": str(root / "state"),
        "model": {"onnx": str(model), "backend": "onnxruntime", "threads": 2},
        "recipe": str(root / "recipes" / "demo"),
        "replay": {"images": [str(p) for p in images], "loop": True},
        "trigger": {"mode": "software", "timeout_s": 5.0},
        "opcua": {
            "endpoint": f"opc.tcp://127.0.0.1:{port}/okcell",
            "security": ["None"],
            "users": [{"name": USER, "password_hash": PASSWORD_HASH}],
        },
    }
    path = root / "cell.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_cell(config_path: Path) -> CellService:
    config = load_cell_config(config_path)
    assert config.opcua is not None
    service = CellService(config)
    service.add_sink(OpcUaServer(config.opcua, service, status_period_s=0.05))
    service.startup()
    return service


def endpoint(service: CellService) -> str:
    server = next(sink for sink in service.sinks if isinstance(sink, OpcUaServer))
    return server.endpoint_url


@pytest.fixture(scope="module")
def cell_root(exported_model: Path, demo_recipe: Path, demo_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cell folder: recipes/demo and recipes/demo-copy (good), recipes/tampered (bank index altered after calibration),
    recipes/golden (golden images that pass) and recipes/golden-shifted (one expected score off by 0.1)."""
    root = tmp_path_factory.mktemp("opcua-cell")
    for name in ("demo", "demo-copy", "tampered"):
        shutil.copytree(demo_recipe, root / "recipes" / name)
    for name in ("golden", "golden-shifted"):
        shutil.copytree(demo_recipe, root / "recipes" / name)
        add_recipe_golden(root / "recipes" / name, exported_model, [demo_images / "holdout" / "ok"], 2, 0.01)
    shifted = root / "recipes" / "golden-shifted" / GOLDEN_FILE
    golden = json.loads(shifted.read_text())
    golden["golden"][0]["score"] += 0.1
    shifted.write_text(json.dumps(golden))
    bank = root / "recipes" / "tampered" / BANK_FILE
    content = bank.read_bytes()
    bank.write_bytes(content[:-16] + bytes(b ^ 0xFF for b in content[-16:]))
    images = sorted((demo_images / "holdout").rglob("*.png"))
    assert len(images) >= 6
    write_config(root, exported_model, images, free_port())
    return root


@pytest.fixture(scope="module")
def service(cell_root: Path) -> Iterator[CellService]:
    running = start_cell(cell_root / "cell.yaml")
    yield running
    running.shutdown()


def archive_rows(service: CellService) -> dict[int, sqlite3.Row]:
    with sqlite3.connect(service.archive.db_path) as db:
        db.row_factory = sqlite3.Row
        return {row["cycle"]: row for row in db.execute("SELECT * FROM results")}


def check_one_event_and_row_per_trigger(events: list, result_ids: list[int], service: CellService, part_ids: dict[int, str]) -> None:
    ids = [event.ResultId for event in events]
    assert len(ids) == len(set(ids)) == len(result_ids), "exactly one ResultReady per trigger, no duplicates"
    assert sorted(ids) == sorted(result_ids)
    assert sorted(ids) == list(range(min(ids), max(ids) + 1)), "no gaps in the counter"
    rows = archive_rows(service)
    for event in events:
        row = rows[event.ResultId]
        assert row["part_id"] == event.PartId == part_ids[event.ResultId]
        assert row["decision"] == event.DecisionText
        assert event.Decision == ("OK", "NOK", "ERROR").index(event.DecisionText)
        assert event.RecipeId == row["recipe_id"]
        if event.DecisionText != "ERROR":
            assert event.Score == pytest.approx(row["score"])
            assert event.Threshold == pytest.approx(row["threshold"])


def test_200_sequential_and_20_concurrent_triggers(service: CellService) -> None:
    async def scenario() -> None:
        observer = await connect(endpoint(service))
        callers = [await connect(endpoint(service)) for _ in range(4)]
        try:
            cell, idx = await cell_node(observer)
            collector = EventCollector()
            await subscribe_results(observer, idx, collector)
            trigger = ua.QualifiedName("Trigger", idx)
            part_ids: dict[int, str] = {}
            sequential = []
            for n in range(200):
                result_id = await cell.call_method(trigger, ua.Variant(f"seq-{n}", ua.VariantType.String))
                part_ids[result_id] = f"seq-{n}"
                sequential.append(result_id)
            await collector.wait_for(200, timeout_s=600)
            check_one_event_and_row_per_trigger(collector.events, sequential, service, part_ids)

            async def call(client: Any, n: int) -> int:
                result_id = await client.get_node(ua.NodeId("Cell", idx)).call_method(trigger, ua.Variant(f"conc-{n}"))
                part_ids[result_id] = f"conc-{n}"
                return int(result_id)

            concurrent = await asyncio.gather(*(call(callers[n % 4], n) for n in range(20)))
            await collector.wait_for(220, timeout_s=120)
            check_one_event_and_row_per_trigger(collector.events, sequential + list(concurrent), service, part_ids)
            decisions = {event.DecisionText for event in collector.events}
            assert decisions <= {"OK", "NOK"} and "NOK" in decisions, "holdout NOK parts are found by the real model"
            assert await var(observer, idx, "Results.ResultId").read_value() == max(concurrent)
            heatmaps = [Path(e.HeatmapPath) for e in collector.events if e.DecisionText == "NOK"]
            assert all(path.name.endswith("_heatmap.png") for path in heatmaps), "every NOK result names its heatmap"
            for _ in range(600):  # written off the hot path
                if all(path.is_file() for path in heatmaps):
                    break
                await asyncio.sleep(0.05)
            assert all(path.is_file() for path in heatmaps)
        finally:
            for client in [observer, *callers]:
                await client.disconnect()

    asyncio.run(scenario())


def test_polling_handshake_on_the_real_cell(service: CellService) -> None:
    """A PLC that only reads and writes variables completes 100 cycles of the documented bit handshake."""

    async def plc() -> None:
        async with session(endpoint(service)) as (client, _, idx):
            request, part = var(client, idx, "Handshake.TriggerRequest"), var(client, idx, "Handshake.PartId")
            busy, valid = var(client, idx, "Handshake.Busy"), var(client, idx, "Handshake.ResultValid")
            counter = var(client, idx, "Handshake.ResultCounter")

            async def until(node: Any, wanted: bool) -> None:
                for _ in range(3000):
                    if await node.read_value() == wanted:
                        return
                    await asyncio.sleep(0.005)
                raise AssertionError(f"{node} never became {wanted}")

            previous = await counter.read_value()
            for n in range(100):
                await until(busy, False)
                await part.write_value(ua.DataValue(ua.Variant(f"hs-{n}", ua.VariantType.String)))
                await request.write_value(ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)))
                await until(valid, True)
                assert await busy.read_value() is True, "Busy holds until the PLC lowers TriggerRequest"
                previous += 1
                assert await counter.read_value() == previous
                result_id = await var(client, idx, "Results.ResultId").read_value()
                row = archive_rows(service)[result_id]
                assert row["part_id"] == f"hs-{n}"
                assert await var(client, idx, "Results.DecisionText").read_value() == row["decision"]
                await request.write_value(ua.DataValue(ua.Variant(False, ua.VariantType.Boolean)))
                await until(busy, False)
                assert await valid.read_value() is True, "ResultValid holds until the next request"

    asyncio.run(plc())


def test_bad_recipe_is_refused_and_bad_arguments_keep_the_cell_running(service: CellService) -> None:
    async def scenario() -> None:
        async with session(endpoint(service)) as (client, cell, idx):
            recipes = client.get_node(ua.NodeId("Cell.Recipes", idx))
            activate = ua.QualifiedName("ActivateRecipe", idx)
            active = await var(client, idx, "Recipes.ActiveRecipeId").read_value()
            assert sorted(await var(client, idx, "Recipes.AvailableRecipeIds").read_value()) == [
                "demo", "demo-copy", "golden", "golden-shifted", "tampered"]
            for args, code in [
                ([ua.Variant("tampered")], ua.StatusCodes.BadConfigurationError),
                ([ua.Variant("no-such-recipe")], ua.StatusCodes.BadInvalidArgument),
                ([ua.Variant(7, ua.VariantType.Int32)], ua.StatusCodes.BadInvalidArgument),
            ]:
                with pytest.raises(UaStatusCodeError) as caught:
                    await recipes.call_method(activate, *args)
                assert caught.value.code == code
            assert "tampered" in await var(client, idx, "Recipes.LastActivationError").read_value()
            with pytest.raises(UaStatusCodeError) as caught:
                await cell.call_method(ua.QualifiedName("Trigger", idx), ua.Variant(3.0, ua.VariantType.Double))
            assert caught.value.code == ua.StatusCodes.BadInvalidArgument
            collector = EventCollector()
            await subscribe_results(client, idx, collector)
            result_id = await cell.call_method(ua.QualifiedName("Trigger", idx), ua.Variant("after-bad-calls"))
            await collector.wait_for(1, timeout_s=60)
            assert collector.events[0].ResultId == result_id and collector.events[0].DecisionText in ("OK", "NOK")
            assert active == "demo" and await var(client, idx, "Recipes.ActiveRecipeId").read_value() == "demo"
            assert collector.events[0].RecipeId == service.recipe_id, "the refused recipe did not replace the running one"
            assert await var(client, idx, "State.CurrentStateName").read_value() == "Operational"

    asyncio.run(scenario())


def test_activate_recipe_runs_the_golden_images_it_carries(cell_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A recipe whose golden images do not reproduce is refused (the reason in the log and LastActivationError), the
    old recipe runs on; one whose golden images pass is switched to at the next cycle."""
    caplog.set_level(logging.INFO, logger="edge.runtime.service")
    service = start_cell(second_cell_config(cell_root, "golden"))

    async def scenario() -> None:
        async with session(endpoint(service)) as (client, cell, idx):
            recipes = client.get_node(ua.NodeId("Cell.Recipes", idx))
            activate = ua.QualifiedName("ActivateRecipe", idx)
            with pytest.raises(UaStatusCodeError) as caught:
                await recipes.call_method(activate, ua.Variant("golden-shifted"))
            assert caught.value.code == ua.StatusCodes.BadConfigurationError
            error = await var(client, idx, "Recipes.LastActivationError").read_value()
            assert "golden-shifted: self-test failed: 1 of 2 golden image(s) differ: selftest/000-" in error, error
            refused = [r.getMessage() for r in caplog.records if "refused, keeping" in r.getMessage()]
            assert len(refused) == 1 and "self-test failed: 1 of 2 golden image(s) differ" in refused[0]
            collector = EventCollector()
            await subscribe_results(client, idx, collector)
            await cell.call_method(ua.QualifiedName("Trigger", idx), ua.Variant("after-refusal"))
            await collector.wait_for(1, timeout_s=60)
            assert await var(client, idx, "Recipes.ActiveRecipeId").read_value() == "demo"

            await recipes.call_method(activate, ua.Variant("golden"))
            assert await var(client, idx, "Recipes.LastActivationError").read_value() == ""
            assert any("self-test: 2 golden image(s) passed" in r.getMessage() for r in caplog.records)
            await cell.call_method(ua.QualifiedName("Trigger", idx), ua.Variant("after-switch"))
            await collector.wait_for(2, timeout_s=60)
            assert service.status().active_recipe == "golden"

    try:
        asyncio.run(scenario())
    finally:
        service.shutdown()


def second_cell_config(cell_root: Path, name: str) -> Path:
    """The module's cell.yaml with its own port and state directory (archive), for a cell this test owns."""
    data = yaml.safe_load((cell_root / "cell.yaml").read_text())
    data["state_dir"] = str(cell_root / f"state-{name}")
    data["opcua"]["endpoint"] = f"opc.tcp://127.0.0.1:{free_port()}/okcell"
    path = cell_root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_server_restarts_with_the_service_and_a_subscribed_client_reconnects(cell_root: Path,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="asyncua")
    config_path = second_cell_config(cell_root, "restart")
    service = start_cell(config_path)
    url = endpoint(service)

    async def scenario() -> None:
        async with session(url, auto_reconnect=True, reconnect_max_delay=0.5) as (client, cell, idx):
            collector = EventCollector()
            await subscribe_results(client, idx, collector)
            before = await cell.call_method(ua.QualifiedName("Trigger", idx), ua.Variant("before-restart"))
            await collector.wait_for(1, timeout_s=60)
            await asyncio.to_thread(service.shutdown)
            restarted = await asyncio.to_thread(start_cell, config_path)
            try:
                for _ in range(200):
                    if client.state.name == "CONNECTED":
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                after = await cell.call_method(ua.QualifiedName("Trigger", idx), ua.Variant("after-restart"))
                await collector.wait_for(2, timeout_s=60)
                assert [e.PartId for e in collector.events] == ["before-restart", "after-restart"]
                assert after == before + 1, "result ids continue from the archive across the restart"
                assert collector.events[1].ResultId == after
            finally:
                await asyncio.to_thread(restarted.shutdown)

    asyncio.run(scenario())


def test_part_id_limit_holds_on_every_path(service: CellService) -> None:
    """256 characters, no control characters: on the handshake variable, the Trigger method and the cell itself;
    nothing refused reaches the archive."""
    too_long, control = "x" * 8_000_000, "part\x00id"

    async def scenario() -> None:
        async with session(endpoint(service)) as (client, cell, idx):
            for bad in (too_long, control):
                with pytest.raises(UaStatusCodeError) as caught:
                    await var(client, idx, "Handshake.PartId").write_value(ua.DataValue(ua.Variant(bad, ua.VariantType.String)))
                assert caught.value.code == ua.StatusCodes.BadOutOfRange
                with pytest.raises(UaStatusCodeError) as caught:
                    await cell.call_method(ua.QualifiedName("Trigger", idx), ua.Variant(bad))
                assert caught.value.code == ua.StatusCodes.BadInvalidArgument

    asyncio.run(scenario())
    for bad in (too_long, control, "x" * 257, "line\nfeed"):
        with pytest.raises(InvalidPartId, match="part id"):
            service.request_trigger(bad)
    assert not any(len(row["part_id"]) > 256 or "\x00" in row["part_id"] for row in archive_rows(service).values())
