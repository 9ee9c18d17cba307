"""Client mode against a PLC-like asyncua server on 127.0.0.1: typed writes, strobe order, reconnect."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest
from asyncua import Server, ua
from asyncua.common.callback import CallbackType

from edge.runtime.opcua_config import OpcUaConfig, parse_opcua_config
from edge.opcua.plc_client import PlcClientSink
from edge.opcua.security import ensure_server_certificate
from okcell.result import CellResult, Decision, InspectionResult
from opcua_support import PASSWORD_HASH, free_port

PLC_NODES = {  # field -> (identifier, PLC data type)
    "result_id": ("Vision.ResultId", ua.VariantType.UInt32),
    "part_id": ("Vision.PartId", ua.VariantType.String),
    "decision": ("Vision.Decision", ua.VariantType.Int16),
    "ok": ("Vision.OK", ua.VariantType.Boolean),
    "score": ("Vision.Score", ua.VariantType.Float),
    "timestamp": ("Vision.TriggerTime", ua.VariantType.DateTime),
    "error": ("Vision.Error", ua.VariantType.String),
}


class FakePlcServer:
    """A real asyncua server in its own thread with writable variables in namespace 2, like a PLC's DB."""

    def __init__(self, port: int, pki_dir: Path | None = None) -> None:
        self.port = port
        self.pki_dir = pki_dir  # given: Basic256Sha256 SignAndEncrypt only, with a certificate kept there
        self.values: dict[str, object] = {}
        self.write_order: list[str] = []
        self.result_ids: list[object] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> "FakePlcServer":
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/plc")
        if self.pki_dir is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await server.set_application_uri("urn:test:plc-server")
            cert, key = ensure_server_certificate(self.pki_dir, "urn:test:plc-server")
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            server.set_identity_tokens([ua.UserNameIdentityToken])
        idx = await server.register_namespace("urn:test:plc")
        folder = await server.nodes.objects.add_object(idx, "Vision")
        nodes = {}
        for field, (identifier, vtype) in PLC_NODES.items():
            initial = datetime(2000, 1, 1) if vtype == ua.VariantType.DateTime else ua.get_default_value(vtype)
            node = await folder.add_variable(ua.NodeId(identifier, idx), identifier, ua.Variant(initial, vtype), varianttype=vtype)
            await node.set_writable()
            nodes[node.nodeid] = field

        async def on_write(event, _dispatcher) -> None:
            for item in event.request_params.NodesToWrite:
                field = nodes.get(item.NodeId)
                if field is not None:
                    self.values[field] = item.Value.Value.Value
                    self.write_order.append(field)
                    if field == "result_id":
                        self.result_ids.append(self.values[field])

        server.subscribe_server_callback(CallbackType.PostWrite, on_write)
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        async with server:
            self._ready.set()
            await self._stop.wait()


def result(n: int, decision: Decision = "OK") -> CellResult:
    score = None if decision == "ERROR" else 0.25 * n
    return CellResult(n, f"part-{n}", time.time(), "demo", InspectionResult(decision, score, 0.5, error="bad frame" if decision == "ERROR" else None))


@contextmanager
def plc_sink(plc_client: dict[str, Any], state_dir: Path) -> Iterator[tuple[PlcClientSink, OpcUaConfig]]:
    """A started ``PlcClientSink`` for the ``plc_client`` section of a cell's opcua config, stopped afterwards."""
    section = {"users": [{"name": "plc", "password_hash": PASSWORD_HASH}], "plc_client": plc_client}
    config = parse_opcua_config(section, "cell.yaml", state_dir)
    assert config.plc_client is not None
    sink = PlcClientSink(config.plc_client, config)
    sink.start()
    try:
        yield sink, config
    finally:
        sink.stop()


def wait_for(predicate, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_results_are_written_typed_and_survive_a_plc_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="asyncua")
    port = free_port()
    plc = FakePlcServer(port).start()
    plc_client = {
        "endpoint": f"opc.tcp://127.0.0.1:{port}/plc",
        "nodes": {field: f"ns=2;s={identifier}" for field, (identifier, _) in PLC_NODES.items()},
        "reconnect_s": 0.2,
        "timeout_s": 2,
    }
    try:
        with plc_sink(plc_client, tmp_path) as (sink, _):
            sink.publish(result(1, "NOK"))
            wait_for(lambda: plc.values.get("result_id") == 1)
            assert plc.values["part_id"] == "part-1" and plc.values["decision"] == 1 and plc.values["ok"] is False
            assert plc.values["score"] == pytest.approx(0.25)
            assert isinstance(plc.values["timestamp"], datetime)
            assert plc.write_order[-1] == "result_id", "the id is written after the data it announces"

            plc.stop()
            for n in (2, 3, 4):
                sink.publish(result(n, "ERROR" if n == 3 else "OK"))
            plc = FakePlcServer(port).start()
            wait_for(lambda: plc.values.get("result_id") == 4)
            assert plc.result_ids == [2, 3, 4], "results queued while the PLC was down arrive in order after reconnect"
            assert sink.reconnects >= 1 and sink.dropped == 0 and sink.pending() == 0
            assert plc.values["part_id"] == "part-4" and plc.values["decision"] == 0 and plc.values["ok"] is True
            assert sink.written == 4
    finally:
        plc.stop()


def test_secure_plc_connection_with_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="asyncua")
    monkeypatch.setenv("OKCELL_TEST_PLC_PASSWORD", "plc-secret")
    port = free_port()
    plc = FakePlcServer(port, tmp_path / "plc-pki").start()
    plc_client = {
        "endpoint": f"opc.tcp://127.0.0.1:{port}/plc",
        "security": "Basic256Sha256_SignAndEncrypt",
        "username": "vision",
        "password_env": "OKCELL_TEST_PLC_PASSWORD",
        "nodes": {"result_id": "ns=2;s=Vision.ResultId", "score": "ns=2;s=Vision.Score"},
    }
    try:
        with plc_sink(plc_client, tmp_path / "state") as (sink, config):
            sink.publish(result(7, "NOK"))
            wait_for(lambda: plc.values.get("result_id") == 7)
            assert plc.values["score"] == pytest.approx(1.75)
            assert (config.pki_dir / "server_cert.der").is_file(), "the cell's own certificate identifies it to the PLC"
    finally:
        plc.stop()
