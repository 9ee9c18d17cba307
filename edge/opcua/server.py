"""The OPC UA server sink: asyncua in its own thread and event loop; ``publish`` only hands a small record over."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlparse

from asyncua import Server, ua
from asyncua.common.callback import CallbackType

from edge.opcua.address_space import CellNodes, build_address_space, write_value
from okcell.names import CELL_STATES
from edge.runtime.control import CellControl, CellStatus, InvalidPartId, ResultRecord, TriggerRefused, check_part_id
from edge.runtime.opcua_config import OpcUaConfig
from edge.opcua.handshake import PollingHandshake, PublishedResults
from edge.opcua.security import apply_security
from okcell.result import CellResult
from okcell.schema import ConfigError

log = logging.getLogger(__name__)

APPLICATION_URI = "urn:okcell:server"


class OpcUaServer:
    """``ResultSink`` that serves the cell over OPC UA (address space in docs/opcua.md)."""

    name = "opcua"

    def __init__(self, config: OpcUaConfig, control: CellControl, status_period_s: float = 0.25) -> None:
        self._config = config
        self._control = control
        self._status_period_s = status_period_s
        self._published = PublishedResults()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="opcua-call")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[ResultRecord] | None = None
        # publish() only appends here (no system call, so the caller never gives up the GIL); a bridge thread
        # forwards into the server loop
        self._handoff: queue.SimpleQueue[ResultRecord | None] = queue.SimpleQueue()
        self._bridge: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._server: Server | None = None
        self._nodes: CellNodes | None = None
        self._counter = 0
        self.port: int | None = None  # the bound port (useful with port 0)
        self.dropped = 0  # results not published because the server had stopped
        self._server_gone = False  # a plain flag: publish() must not touch locks

    # --- ResultSink -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server thread; return once the endpoint listens, or raise why it could not start."""
        quiet = logging.getLogger("asyncua")
        if quiet.level == logging.NOTSET:  # asyncua logs every call and session at INFO: too much for months of journal
            quiet.setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._thread_main, name="opcua-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def publish(self, result: CellResult) -> None:
        """Thread-safe and non-blocking: build the flat record and queue it; the server loop does the rest."""
        if self._server_gone:
            self.dropped += 1  # the server died (logged): do not let results pile up for months
            return
        self._handoff.put(ResultRecord.from_cell_result(result))

    def stop(self) -> None:
        """Publish what was handed over, then stop the server."""
        if self._bridge is not None:
            self._handoff.put(None)
            self._bridge.join(timeout=15)
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _forward(self) -> None:
        """Bridge thread: records from publish() into the server loop; ``None`` (from stop) ends the server."""
        loop, target, stopping = self._loop, self._queue, self._stopping
        assert loop is not None and target is not None and stopping is not None
        while True:
            record = self._handoff.get()
            try:
                if record is None:
                    loop.call_soon_threadsafe(stopping.set)
                    return
                loop.call_soon_threadsafe(target.put_nowait, record)
            except RuntimeError:  # the loop is already gone
                return

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def endpoint_url(self) -> str:
        parsed = urlparse(self._config.endpoint)
        return parsed._replace(netloc=f"{parsed.hostname}:{self.port}").geturl()

    # --- server thread ----------------------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - handed to start() or logged
            if not self._ready.is_set():
                self._start_error = exc
                self._ready.set()
            else:
                log.exception("OPC UA server stopped with an error")
        finally:
            self._server_gone = True
            self._ready.set()

    async def _main(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self._config.endpoint)
        server.set_server_name("okcell inspection cell")
        await server.set_application_uri(APPLICATION_URI)
        server.product_uri = "urn:okcell"
        await apply_security(server, self._config, APPLICATION_URI)
        handlers = {
            "Trigger": self._method_trigger,
            "Start": self._command(lambda: self._control.start()),
            "Stop": self._command(lambda: self._control.stop()),
            "Reset": self._command(lambda: self._control.reset()),
            "ActivateRecipe": self._method_activate_recipe,
        }
        nodes = await build_address_space(server, self._config.namespace, handlers)
        self._server, self._nodes = server, nodes
        handshake = PollingHandshake(server, nodes, self._trigger, self._published, self._config.result_timeout_s)
        server.subscribe_server_callback(CallbackType.PreWrite, handshake.check_client_write)
        server.subscribe_server_callback(CallbackType.PostWrite, handshake.on_client_write)
        event = await server.get_event_generator(nodes.event_type, nodes.cell)
        try:
            await server.start()
        except OSError as exc:
            raise ConfigError(f"opcua: cannot listen on {self._config.endpoint}: {exc}") from exc
        assert server.bserver is not None
        self.port = server.bserver.port
        self._queue = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        await self._refresh_status()
        tasks = [
            asyncio.create_task(self._publisher(event)),
            asyncio.create_task(self._status_loop()),
            asyncio.create_task(handshake.run()),
        ]
        log.info("OPC UA server listening on %s (security: %s)", self.endpoint_url, ", ".join(self._config.security))
        self._bridge = threading.Thread(target=self._forward, name="opcua-publish", daemon=True)
        self._bridge.start()
        self._ready.set()
        try:
            await self._stopping.wait()
            await self._drain()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await _close_server(server)

    async def _drain(self, timeout_s: float = 2.0) -> None:
        """Publish what was handed over before stop() (bounded wait)."""
        assert self._queue is not None
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except asyncio.TimeoutError:
            log.warning("OPC UA: %d results not published at stop", self._queue.qsize())

    async def _publisher(self, event: Any) -> None:
        assert self._queue is not None
        while True:
            record = await self._queue.get()
            try:
                await self._publish_record(record, event)
            except Exception:
                log.exception("OPC UA: publishing result %d failed", record.result_id)
            finally:
                self._queue.task_done()

    async def _publish_record(self, record: ResultRecord, event: Any) -> None:
        server, nodes = self._server, self._nodes
        assert server is not None and nodes is not None
        trigger_time = datetime.fromtimestamp(record.timestamp, timezone.utc)
        values = {
            "ResultId": record.result_id,
            "Cycle": record.cycle,
            "PartId": record.part_id,
            "RecipeId": record.recipe_id,
            "TriggerTime": trigger_time,
            "ProcessingTimeMs": record.processing_ms,
            "Decision": record.decision_code,
            "DecisionText": record.decision,
            "Score": record.score,
            "Threshold": record.threshold,
            "NearestLabel": record.nearest_label,
            "HeatmapPath": record.heatmap_path,
            "ErrorText": record.error,
        }
        for name, value in values.items():
            await write_value(server, nodes, f"Results.{name}", value)
        self._counter = (self._counter + 1) % 2**32
        await write_value(server, nodes, "Handshake.ResultCounter", self._counter)
        for name, value in values.items():
            setattr(event.event, name, value)
        await event.trigger(message=f"result {record.result_id}: {record.decision}")
        self._published.mark(record.result_id)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self._status_period_s)
            try:
                await self._refresh_status()
            except Exception:
                log.exception("OPC UA: reading the cell status failed")

    async def _refresh_status(self) -> None:
        server, nodes = self._server, self._nodes
        assert server is not None and nodes is not None
        status: CellStatus = self._control.status()
        state = status.state if status.state in CELL_STATES else "Error"
        updates = {
            "State.CurrentState": CELL_STATES.index(state),
            "State.CurrentStateName": state,
            "State.ErrorText": status.error_text,
            "State.CameraConnected": status.camera_connected,
            "State.Backend": status.backend,
            "Recipes.AvailableRecipeIds": list(status.available_recipes),
            "Recipes.ActiveRecipeId": status.active_recipe,
            "Diagnostics.CountOK": status.counts.get("OK", 0),
            "Diagnostics.CountNOK": status.counts.get("NOK", 0),
            "Diagnostics.CountERROR": status.counts.get("ERROR", 0),
            "Diagnostics.CycleTimeP50Ms": status.cycle_p50_ms or 0.0,
            "Diagnostics.CycleTimeP99Ms": status.cycle_p99_ms or 0.0,
            "Diagnostics.FetchTimeouts": status.fetch_timeouts,
            "Diagnostics.Reconnects": status.reconnects,
        }
        for key, value in updates.items():
            current = server.read_attribute_value(nodes.node_id(key)).Value.Value
            if current != value:
                await write_value(server, nodes, key, value)

    # --- methods (run in the server loop; blocking cell calls go to the worker pool) -------------------------

    async def _trigger(self, part_id: str) -> int:
        loop = asyncio.get_running_loop()
        return int(await loop.run_in_executor(self._pool, self._control.request_trigger, part_id))

    async def _method_trigger(self, _parent: ua.NodeId, *args: ua.Variant) -> Any:
        bad = _check_arguments(args, [ua.VariantType.String])
        if bad is not None:
            return bad
        try:
            part_id = check_part_id(args[0].Value or "")
        except InvalidPartId:
            return _argument_error(1, 0, ua.StatusCodes.BadOutOfRange)
        try:
            result_id = await self._trigger(part_id)
        except TriggerRefused as exc:
            log.warning("OPC UA Trigger refused: %s", exc)
            return ua.StatusCode(ua.StatusCodes.BadInvalidState)
        return [ua.Variant(result_id, ua.VariantType.UInt32)]

    async def _method_activate_recipe(self, _parent: ua.NodeId, *args: ua.Variant) -> Any:
        server, nodes = self._server, self._nodes
        assert server is not None and nodes is not None
        bad = _check_arguments(args, [ua.VariantType.String])
        if bad is not None:
            return bad
        recipe_id = args[0].Value or ""
        available = self._control.status().available_recipes
        if recipe_id not in available:
            await write_value(server, nodes, "Recipes.LastActivationError", f"unknown recipe {recipe_id!r}; available: {', '.join(available)}")
            return _argument_error(1, 0, ua.StatusCodes.BadInvalidArgument)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self._control.activate_recipe, recipe_id)
        except ConfigError as exc:
            log.warning("OPC UA ActivateRecipe %r refused: %s", recipe_id, exc)
            await write_value(server, nodes, "Recipes.LastActivationError", str(exc))
            return ua.StatusCode(ua.StatusCodes.BadConfigurationError)
        await write_value(server, nodes, "Recipes.LastActivationError", "")
        await self._refresh_status()  # ActiveRecipeId comes from the cell (which may switch at the next cycle)
        return []

    def _command(self, action: Callable[[], None]) -> Callable[..., Any]:
        async def method(_parent: ua.NodeId, *args: ua.Variant) -> Any:
            bad = _check_arguments(args, [])
            if bad is not None:
                return bad
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool, action)
            except (TriggerRefused, ConfigError, RuntimeError) as exc:
                log.warning("OPC UA command refused: %s", exc)
                return ua.StatusCode(ua.StatusCodes.BadInvalidState)
            await self._refresh_status()
            return []

        return method


async def _close_server(server: Server, timeout_s: float = 5.0) -> None:
    """Stop listening first, then close sessions. (asyncua closes the connections before the listener, so a client
    that reconnects at once lands on a server that is going away and keeps it from ever finishing.)"""
    listener = getattr(server.bserver, "_server", None)
    if listener is not None:
        listener.close()
    try:
        await asyncio.wait_for(server.stop(), timeout_s)
    except asyncio.TimeoutError:
        log.warning("OPC UA server did not close its connections within %g s; dropping them", timeout_s)
        for transport in list(server.iserver.asyncio_transports):
            transport.abort()


def _check_arguments(args: tuple[ua.Variant, ...], expected: list[ua.VariantType]) -> ua.CallMethodResult | ua.StatusCode | None:
    """None if ``args`` match ``expected`` variant types, else the Bad result to return."""
    if len(args) < len(expected):
        return ua.StatusCode(ua.StatusCodes.BadArgumentsMissing)
    if len(args) > len(expected):
        return ua.StatusCode(ua.StatusCodes.BadTooManyArguments)
    for index, (arg, vtype) in enumerate(zip(args, expected)):
        if arg.VariantType != vtype or arg.is_array:
            return _argument_error(len(args), index, ua.StatusCodes.BadTypeMismatch)
    return None


def _argument_error(count: int, index: int, code: int) -> ua.CallMethodResult:
    result = ua.CallMethodResult()
    result.StatusCode = ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
    result.InputArgumentResults = [ua.StatusCode(code) if i == index else ua.StatusCode() for i in range(count)]
    return result

