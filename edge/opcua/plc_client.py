"""Client mode: write every result into nodes of the PLC's own OPC UA server, reconnecting when the link drops.

Per result two Write requests: first the data fields, then ``cycle`` and ``result_id`` (a PLC that watches the id
therefore always sees complete data). Results wait in a bounded queue while the PLC is unreachable; when the queue is
full the oldest is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from datetime import datetime, timezone
from typing import Any

from asyncua import Client, ua
from asyncua.crypto import security_policies

from edge.runtime.control import ResultRecord
from edge.runtime.opcua_config import OpcUaConfig, PlcClientConfig
from edge.opcua.security import ensure_server_certificate
from okcell.result import CellResult

log = logging.getLogger(__name__)

CLIENT_APPLICATION_URI = "urn:okcell:server"  # the cell's certificate names this URI and allows client use
STROBE_FIELDS = ("cycle", "result_id")  # written last, in this order


def record_fields(record: ResultRecord) -> dict[str, Any]:
    """Every field client mode can write (see ``config.PLC_RESULT_FIELDS``)."""
    return {
        "result_id": record.result_id,
        "cycle": record.cycle,
        "part_id": record.part_id,
        "recipe_id": record.recipe_id,
        "timestamp": datetime.fromtimestamp(record.timestamp, timezone.utc),
        "processing_ms": record.processing_ms,
        "decision": record.decision_code,
        "decision_text": record.decision,
        "ok": record.decision == "OK",
        "score": record.score,
        "threshold": record.threshold,
        "nearest_label": record.nearest_label,
        "heatmap_path": record.heatmap_path,
        "error": record.error,
    }


def convert(value: Any, vtype: ua.VariantType) -> Any:
    """``value`` as the PLC node's type (numbers rounded for integer nodes, text for strings)."""
    if vtype == ua.VariantType.String:
        return value.isoformat() if isinstance(value, datetime) else str(value)
    if vtype == ua.VariantType.Boolean:
        return bool(value)
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value.timestamp() if isinstance(value, datetime) else value)
    if vtype == ua.VariantType.DateTime:
        return value
    return int(value.timestamp() if isinstance(value, datetime) else round(value))


class PlcClientSink:
    """``ResultSink`` that writes results into a PLC's OPC UA server from its own thread and event loop."""

    name = "plc_client"

    def __init__(self, config: PlcClientConfig, opcua: OpcUaConfig) -> None:
        self._config = config
        self._opcua = opcua
        self._pending: deque[ResultRecord] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.reconnects = 0
        self.connected = False

    def start(self) -> None:
        started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(started)), name="opcua-plc-client", daemon=True)
        self._thread.start()
        started.wait()

    def publish(self, result: CellResult) -> None:
        record = ResultRecord.from_cell_result(result)
        with self._lock:
            if len(self._pending) >= self._config.queue_size:
                self._pending.popleft()
                self.dropped += 1
                log.warning("PLC client: queue full, oldest result dropped (%d so far)", self.dropped)
            self._pending.append(record)
        self._notify()

    def stop(self) -> None:
        """Write what is queued while still connected, then disconnect (bounded by the write timeout)."""
        self._stopping = True
        self._notify()
        if self._thread is not None:
            self._thread.join(timeout=self._config.timeout_s + 5)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass

    async def _main(self, started: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        started.set()
        first = True
        while not self._stopping:
            client = await self._connect(first)
            first = False
            if client is None:
                continue
            try:
                await self._write_loop(client)
            except Exception as exc:  # the link dropped or the PLC refused: reconnect and resend the same result
                log.warning("PLC client: write to %s failed (%s); reconnecting", self._config.endpoint, exc)
            finally:
                self.connected = False
                await _close(client)
        log.info("PLC client stopped (%d written, %d dropped, %d pending)", self.written, self.dropped, self.pending())

    async def _connect(self, first: bool) -> "_Link | None":
        if not first:
            await self._sleep(self._config.reconnect_s)
            if self._stopping:
                return None
            self.reconnects += 1
        client = Client(self._config.endpoint, timeout=self._config.timeout_s)
        client.application_uri = CLIENT_APPLICATION_URI
        try:
            if self._config.security != "None":
                cert, key = ensure_server_certificate(self._opcua.pki_dir, CLIENT_APPLICATION_URI)
                mode = ua.MessageSecurityMode.SignAndEncrypt if self._config.security.endswith("SignAndEncrypt") else ua.MessageSecurityMode.Sign
                await client.set_security(security_policies.SecurityPolicyBasic256Sha256, str(cert), str(key), mode=mode)
            if self._config.username is not None and self._config.password_env is not None:
                client.set_user(self._config.username)
                client.set_password(os.environ.get(self._config.password_env, ""))
            await client.connect()
            link = _Link(client)
            await link.resolve(self._config.nodes)
        except Exception as exc:
            log.warning("PLC client: cannot connect to %s (%s); retry in %g s", self._config.endpoint, exc, self._config.reconnect_s)
            await _close(client)
            return None
        self.connected = True
        log.info("PLC client connected to %s", self._config.endpoint)
        return link

    async def _write_loop(self, link: "_Link") -> None:
        assert self._wake is not None
        while True:
            with self._lock:
                record = self._pending[0] if self._pending else None
            if record is None:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await link.write(record_fields(record))
            with self._lock:
                if self._pending and self._pending[0] is record:
                    self._pending.popleft()
            self.written += 1

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass


class _Link:
    """A connected client with the configured nodes resolved to node ids and variant types."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._targets: dict[str, tuple[ua.NodeId, ua.VariantType]] = {}

    async def resolve(self, nodes: dict[str, str]) -> None:
        for field, node_id in nodes.items():
            node = self.client.get_node(node_id)
            self._targets[field] = (node.nodeid, await node.read_data_type_as_variant_type())

    async def write(self, fields: dict[str, Any]) -> None:
        data = [name for name in self._targets if name not in STROBE_FIELDS]
        strobe = [name for name in STROBE_FIELDS if name in self._targets]
        for names in (data, strobe):
            if not names:
                continue
            ids = [self._targets[name][0] for name in names]
            values = [ua.DataValue(ua.Variant(convert(fields[name], self._targets[name][1]), self._targets[name][1])) for name in names]
            results = await self.client.uaclient.write_attributes(ids, values, ua.AttributeIds.Value)
            for name, status in zip(names, results):
                if not status.is_good():
                    raise RuntimeError(f"PLC refused the write of {name} to {self._targets[name][0].to_string()}: {status.name}")


async def _close(client: "Client | _Link") -> None:
    target = client.client if isinstance(client, _Link) else client
    try:
        await target.disconnect()
    except Exception:  # already gone
        pass
