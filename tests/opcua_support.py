"""Helpers for the OPC UA tests: free ports, configs, a cell that the test drives, client shortcuts."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
from collections import Counter
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from asyncua import Client, Node, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge.runtime.stages import TimingWindow
from edge.runtime.control import CellStatus, TriggerRefused
from edge.runtime.opcua_config import OpcUaConfig, parse_opcua_config
from edge.opcua.security import hash_password
from edge.opcua.server import OpcUaServer
from okcell.names import CellState
from okcell.result import CellResult, InspectionResult
from okcell.schema import ConfigError

USER, PASSWORD = "plc", "line-7-secret"
PASSWORD_HASH = hash_password(PASSWORD, iterations=1000)  # cheap for tests; production default is 200k
NAMESPACE = "urn:okcell:cell"
SECURE = ["Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign"]
CLIENT_URI = "urn:test:plc-client"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_client_cert(folder: Path, name: str, app_uri: str = CLIENT_URI) -> tuple[Path, Path]:
    """A self-signed client certificate (DER) and key (PEM) for ``app_uri``, like a PLC or UaExpert brings."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.der", folder / f"{name}.pem"
    asyncio.run(setup_self_signed_certificate(
        key, cert, app_uri, socket.gethostname(), [ExtendedKeyUsageOID.CLIENT_AUTH], {"organizationName": "test"}
    ))
    return cert, key


def make_config(state_dir: Path, port: int, **section: Any) -> OpcUaConfig:
    data: dict[str, Any] = {
        "endpoint": f"opc.tcp://127.0.0.1:{port}/okcell",
        "security": ["None"],
        "users": [{"name": USER, "password_hash": PASSWORD_HASH}],
    }
    data.update(section)
    return parse_opcua_config(data, "cell.yaml", state_dir)


class DrivenCell:
    """A ``CellControl`` whose results come from ``produce(cycle, part_id)`` on a worker thread, in cycle order,
    handed to every sink like the service does."""

    def __init__(self, produce: Callable[[int, str], InspectionResult], recipes: tuple[str, ...] = ("demo", "demo-b")) -> None:
        self.sinks: list[Any] = []
        self.produce = produce
        self.cycle = 0
        self.state: CellState = "Operational"
        self.cycle_ms = TimingWindow()
        self.error_text = ""
        self.recipes = recipes
        self.active_recipe = recipes[0]
        self.bad_recipes: set[str] = set()
        self.published: list[CellResult] = []
        self._lock = threading.Lock()
        self._requests: queue.Queue[tuple[int, str, float] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, daemon=True)
        self._worker.start()

    def request_trigger(self, part_id: str) -> int:
        with self._lock:
            if self.state != "Operational":
                raise TriggerRefused(f"cell is {self.state}")
            self.cycle += 1
            self._requests.put((self.cycle, part_id, time.time()))
            return self.cycle

    def start(self) -> None:
        self.state = "Operational"

    def stop(self) -> None:
        self.state = "Halted"

    def reset(self) -> None:
        self.state, self.error_text = "Operational", ""

    def activate_recipe(self, recipe_id: str) -> None:
        if recipe_id in self.bad_recipes:
            raise ConfigError(f"recipes/{recipe_id}/manifest.json: hash mismatch for bank.bin")
        self.active_recipe = recipe_id

    def status(self) -> CellStatus:
        counts = Counter(result.decision for result in self.published)
        return CellStatus(self.state, self.error_text, True, "onnxruntime", self.active_recipe, self.recipes, 3, 1,
                          dict(counts), self.cycle_ms.percentile("cycle", 50), self.cycle_ms.percentile("cycle", 99))

    def close(self) -> None:
        self._requests.put(None)
        self._worker.join(timeout=5)

    def _work(self) -> None:
        while (request := self._requests.get()) is not None:
            cycle, part_id, trigger_time = request
            result = CellResult(cycle, part_id, trigger_time, self.active_recipe, self.produce(cycle, part_id))
            self.published.append(result)
            self.cycle_ms.add("cycle", (time.time() - trigger_time) * 1000.0)
            for sink in self.sinks:
                sink.publish(result)


@contextmanager
def serving(produce: Callable[[int, str], InspectionResult], config: OpcUaConfig,
            **server_options: Any) -> Iterator[tuple[DrivenCell, OpcUaServer]]:
    """A ``DrivenCell`` of ``produce`` behind a started ``OpcUaServer`` (its sink); both stopped afterwards."""
    cell = DrivenCell(produce)
    try:
        server = OpcUaServer(config, cell, **server_options)
        cell.sinks.append(server)
        server.start()
        try:
            yield cell, server
        finally:
            server.stop()
    finally:
        cell.close()


async def connect(url: str, user: str | None = USER, password: str | None = PASSWORD, **kwargs: Any) -> Client:
    client = Client(url, timeout=10)
    if user is not None:
        client.set_user(user)
    if password is not None:
        client.set_password(password)
    await client.connect(**kwargs)
    return client


async def cell_node(client: Client) -> tuple[Node, int]:
    idx = await client.get_namespace_index(NAMESPACE)
    return client.get_node(ua.NodeId("Cell", idx)), idx


@asynccontextmanager
async def session(url: str, **kwargs: Any) -> AsyncIterator[tuple[Client, Node, int]]:
    """A client connected as ``connect`` does, with the Cell object and the namespace index; disconnected after."""
    client = await connect(url, **kwargs)
    try:
        cell, idx = await cell_node(client)
        yield client, cell, idx
    finally:
        await client.disconnect()


def var(client: Client, idx: int, key: str) -> Node:
    return client.get_node(ua.NodeId(f"Cell.{key}", idx))


class EventCollector:
    """Subscription handler that keeps every ResultReady event."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.events.append(event)

    async def wait_for(self, count: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.events) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


async def subscribe_results(client: Client, idx: int, handler: EventCollector) -> Any:
    subscription = await client.create_subscription(20, handler)
    await subscription.subscribe_events(
        client.get_node(ua.NodeId("Cell", idx)), client.get_node(ua.NodeId("ResultReadyEventType", idx)), queuesize=1000
    )
    return subscription
