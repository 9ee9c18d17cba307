"""The PLC's part: OPC UA clients that trigger the cell and subscribe to its ResultReady events.

Each client is an asyncua ``Client`` logged in with a user and password, like a line PLC: it calls
``Trigger(PartId)`` (one call at a time, every part id used once) and then waits for the ``ResultReady`` event of
the result id it got. It reconnects after a connection loss and backs off after a refused trigger (0.2 s doubling
to 2 s), and the fault injector drops and reconnects it (:meth:`Plc.drop`). Every call and every event is recorded
for the ledger check."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from asyncua import Client, Node, ua
from asyncua.client.ua_client import UaClientState
from asyncua.ua.uaerrors import UaStatusCodeError

from okcell.progress import Progress

CALL_TIMEOUT_S = 10.0  # a Trigger call without an answer by then counts as unanswered
RESULT_TIMEOUT_S = 60.0  # longest wait for the event of an accepted trigger on a live connection
BACKOFF_S = (0.2, 2.0)  # first and longest pause after a refused trigger or a failed connect
NAMESPACE = "urn:okcell:cell"


@dataclass
class TriggerCall:
    """One ``Trigger`` call: accepted (``result_id``), refused (``refused``: the Bad status) or unanswered."""

    part_id: str
    client: int
    sent: float  # time.monotonic()
    result_id: int | None = None
    refused: str = ""
    no_reply: str = ""  # why no answer came (the call may still have been accepted)
    answered: float | None = None  # when this client got the ResultReady event of its result id


@dataclass(frozen=True)
class SeenEvent:
    """A ResultReady event as one client received it."""

    result_id: int
    part_id: str
    decision: str
    client: int


@dataclass
class _Connection:
    """One client session with a ResultReady subscription (the subscription handler is this object)."""

    client: Client
    index: int
    events: list[SeenEvent]
    cell: Node = field(init=False)
    idx: int = field(init=False)
    seen: dict[int, float] = field(default_factory=dict)  # result id -> time its event arrived

    @classmethod
    async def open(cls, url: str, user: str, password: str, index: int, events: list[SeenEvent]) -> "_Connection":
        client = Client(url, timeout=CALL_TIMEOUT_S, watchdog_intervall=3.0)
        client.set_user(user)
        client.set_password(password)
        await client.connect()
        connection = cls(client, index, events)
        try:
            connection.idx = await client.get_namespace_index(NAMESPACE)
            connection.cell = client.get_node(ua.NodeId("Cell", connection.idx))
            subscription = await client.create_subscription(20, connection)
            await subscription.subscribe_events(connection.cell,
                                                client.get_node(ua.NodeId("ResultReadyEventType", connection.idx)),
                                                queuesize=1000)
        except BaseException:
            await connection.close()
            raise
        return connection

    def event_notification(self, event: Any) -> None:
        self.seen[int(event.ResultId)] = time.monotonic()
        self.events.append(SeenEvent(int(event.ResultId), str(event.PartId), str(event.DecisionText), self.index))

    @property
    def alive(self) -> bool:
        return self.client.uaclient.state is UaClientState.CONNECTED

    async def trigger(self, part_id: str) -> int:
        method = ua.QualifiedName("Trigger", self.idx)
        return int(await self.cell.call_method(method, ua.Variant(part_id, ua.VariantType.String)))

    async def wait_result(self, result_id: int, timeout_s: float) -> float | None:
        """When the event of ``result_id`` arrived; None if the connection broke or it did not come in time."""
        deadline = time.monotonic() + timeout_s
        while result_id not in self.seen:
            if not self.alive or time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        return self.seen[result_id]

    async def close(self, abrupt: bool = False) -> None:
        """Close the session (``abrupt``: only drop the socket, as a pulled cable or a crashed PLC would)."""
        if not abrupt:
            try:
                await asyncio.wait_for(self.client.disconnect(), 3.0)
                return
            except Exception:  # a dead or stopped server: drop the socket below
                pass
        self.client.uaclient.request_disconnect()
        self.client.disconnect_socket()


class Plc:
    """``clients`` OPC UA clients sharing a budget of ``total`` triggers, in one event loop thread."""

    def __init__(self, url: str, user: str, password: str, clients: int, total: int, progress: Progress) -> None:
        self.url, self.user, self.password = url, user, password
        self.total = total
        self.progress = progress
        self.calls: list[TriggerCall] = []
        self.events: list[SeenEvent] = []
        self.reconnects = [0] * clients
        self._connections: list[_Connection | None] = [None] * clients
        self._held_until = [0.0] * clients
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(clients)), name="plc", daemon=True)

    @property
    def sent(self) -> int:
        return len(self.calls)

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    def drop(self, clients: list[int], abrupt: bool, hold_s: float) -> None:
        """Disconnect ``clients`` (closing the session, or ``abrupt``: only the socket); they reconnect after ``hold_s``."""
        self._run(self._drop(clients, abrupt, hold_s))

    def activate_recipe(self, recipe_id: str) -> str:
        """Call ``ActivateRecipe`` from a separate session (an HMI); returns "Good" or the Bad status."""
        result: str = self._run(self._activate(recipe_id))
        return result

    def connected(self) -> int:
        """How many clients are connected now."""
        return sum(1 for c in self._connections if c is not None and c.alive)

    def _run(self, coroutine: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=120)

    async def _main(self, clients: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._started.set()
        await asyncio.gather(*(self._client(index) for index in range(clients)))

    def _next_call(self, index: int) -> TriggerCall | None:
        if len(self.calls) >= self.total:
            return None
        call = TriggerCall(f"c{index}-{len(self.calls):06d}", index, time.monotonic())
        self.calls.append(call)
        return call

    async def _client(self, index: int) -> None:
        connection: _Connection | None = None
        backoff = BACKOFF_S[0]
        while len(self.calls) < self.total:
            if connection is None or not connection.alive:
                if connection is not None:
                    await connection.close(abrupt=True)
                    self._connections[index] = connection = None
                    self.reconnects[index] += 1
                await asyncio.sleep(max(0.0, self._held_until[index] - time.monotonic()))
                try:
                    connection = await _Connection.open(self.url, self.user, self.password, index, self.events)
                except Exception:
                    await asyncio.sleep(backoff)
                    backoff = min(2 * backoff, BACKOFF_S[1])
                    continue
                self._connections[index] = connection
                backoff = BACKOFF_S[0]
            call = self._next_call(index)
            if call is None:
                break
            self.progress.advance(1, f"{self.connected()} clients connected")
            try:
                result_id = await asyncio.wait_for(connection.trigger(call.part_id), CALL_TIMEOUT_S)
            except UaStatusCodeError as exc:
                call.refused = type(exc).__name__
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, BACKOFF_S[1])
                continue
            except Exception as exc:  # connection lost, closed by a drop, or no answer in time
                call.no_reply = "no answer in time" if isinstance(exc, asyncio.TimeoutError) else "connection lost"
                await connection.close(abrupt=True)
                continue
            backoff = BACKOFF_S[0]
            call.result_id = result_id
            call.answered = await connection.wait_result(result_id, RESULT_TIMEOUT_S)
        if connection is not None:
            await connection.close()

    async def _drop(self, clients: list[int], abrupt: bool, hold_s: float) -> None:
        for index in clients:
            self._held_until[index] = time.monotonic() + hold_s
            connection = self._connections[index]
            if connection is not None:
                await connection.close(abrupt=abrupt)

    async def _activate(self, recipe_id: str) -> str:
        connection = await _Connection.open(self.url, self.user, self.password, -1, [])
        try:
            recipes = connection.client.get_node(ua.NodeId("Cell.Recipes", connection.idx))
            await recipes.call_method(ua.QualifiedName("ActivateRecipe", connection.idx),
                                      ua.Variant(recipe_id, ua.VariantType.String))
            return "Good"
        except UaStatusCodeError as exc:
            return type(exc).__name__
        finally:
            await connection.close()
