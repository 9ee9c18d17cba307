"""The polling bit handshake for PLCs that read and write variables instead of calling methods and subscribing.

Under ``Cell.Handshake`` (timing diagram in docs/opcua.md)::

    1. PLC waits for Busy = False, writes PartId (refused with BadOutOfRange unless check_part_id accepts it),
       then TriggerRequest = True
    2. cell: Busy = True, ResultValid = False, HandshakeError = "", queues one trigger
    3. cell: result variables written, ResultCounter + 1, then ResultValid = True
       (a refused trigger or a timeout sets HandshakeError instead and leaves ResultValid = False)
    4. PLC reads the results, then writes TriggerRequest = False
    5. cell: Busy = False; ResultValid stays True until the next request

Runs as a task in the OPC UA server's event loop; woken by every client write.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any, Awaitable, Callable

from asyncua import Server, ua
from asyncua.common.utils import ServiceError

from edge.opcua.address_space import CellNodes, read_value, write_value
from edge.runtime.control import InvalidPartId, check_part_id

log = logging.getLogger(__name__)


class PublishedResults:
    """Result ids already published (bounded memory) and waiters for ids still to come; event-loop only."""

    def __init__(self, keep: int = 4096) -> None:
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._keep = keep

    def mark(self, result_id: int) -> None:
        self._seen[result_id] = None
        if len(self._seen) > self._keep:
            self._seen.popitem(last=False)
        for waiter in self._waiters.pop(result_id, []):
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, result_id: int, timeout_s: float) -> None:
        """Return once ``result_id`` is published; ``asyncio.TimeoutError`` after ``timeout_s``."""
        if result_id in self._seen:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(result_id, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        finally:
            waiters = self._waiters.get(result_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[result_id]


class PollingHandshake:
    """TriggerRequest / Busy / ResultValid / ResultCounter state machine (see module docstring)."""

    def __init__(
        self,
        server: Server,
        nodes: CellNodes,
        trigger: Callable[[str], Awaitable[int]],
        published: PublishedResults,
        result_timeout_s: float,
    ) -> None:
        self._server = server
        self._nodes = nodes
        self._trigger = trigger
        self._published = published
        self._timeout_s = result_timeout_s
        self._wake = asyncio.Event()
        self._request_id = nodes.node_id("Handshake.TriggerRequest")
        self._part_id = nodes.node_id("Handshake.PartId")

    def check_client_write(self, event: Any, _dispatcher: Any) -> None:
        """``CallbackType.PreWrite`` listener: refuse the whole Write (``BadOutOfRange``, nothing written) if it
        would set a PartId that :func:`check_part_id` refuses."""
        for item in event.request_params.NodesToWrite:
            value = item.Value.Value.Value if item.Value.Value is not None else None
            if item.NodeId == self._part_id and item.AttributeId == ua.AttributeIds.Value and isinstance(value, str):
                try:
                    check_part_id(value)
                except InvalidPartId as exc:
                    log.warning("handshake PartId write refused: %s", exc)
                    raise ServiceError(ua.StatusCodes.BadOutOfRange) from exc

    def on_client_write(self, event: Any, _dispatcher: Any) -> None:
        """``CallbackType.PostWrite`` listener: wake the state machine when TriggerRequest was written."""
        if any(item.NodeId == self._request_id for item in event.request_params.NodesToWrite):
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._until_request(True)
            await self._set("Handshake.ResultValid", False)
            await self._set("Handshake.HandshakeError", "")
            await self._set("Handshake.Busy", True)
            part_id = read_value(self._server, self._nodes, "Handshake.PartId") or ""
            try:
                result_id = await self._trigger(part_id)
                await self._published.wait(result_id, self._timeout_s)
                await self._set("Handshake.ResultValid", True)
            except asyncio.TimeoutError:
                await self._fail(f"no result within {self._timeout_s:g} s")
            except Exception as exc:  # refused trigger: the PLC sees the reason, the loop goes on
                await self._fail(str(exc) or type(exc).__name__)
            await self._until_request(False)
            await self._set("Handshake.Busy", False)

    async def _until_request(self, wanted: bool) -> None:
        while bool(read_value(self._server, self._nodes, "Handshake.TriggerRequest")) != wanted:
            self._wake.clear()
            await self._wake.wait()

    async def _fail(self, reason: str) -> None:
        log.warning("handshake trigger failed: %s", reason)
        await self._set("Handshake.HandshakeError", reason)

    async def _set(self, key: str, value: Any) -> None:
        await write_value(self._server, self._nodes, key, value)
