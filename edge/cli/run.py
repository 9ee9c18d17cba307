"""``okcell run --config cell.yaml``: run the inspection cell until SIGTERM (systemd ``Type=notify``).

SIGTERM/SIGINT: finish queued triggers and stop. SIGHUP: reload the recipe (``recipe:`` or the one ``.active`` beside it
names; a bad one is refused and logged, the running one stays)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

log = logging.getLogger("okcell.run")
_SIGNAL_POLL_S = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="cell.yaml (see docs/cell.md)")


def run(args: argparse.Namespace) -> int:
    from edge.acquisition.source import SourceError
    from edge.runtime.cell_config import load_cell_config
    from edge.runtime.service import CellService
    from okcell.schema import ConfigError

    config = load_cell_config(args.config)
    service = CellService(config)
    if config.opcua is not None and config.opcua.enabled:
        from edge.opcua.server import OpcUaServer

        service.add_sink(OpcUaServer(config.opcua, service))
        if config.opcua.plc_client is not None:
            from edge.opcua.plc_client import PlcClientSink

            service.add_sink(PlcClientSink(config.opcua.plc_client, config.opcua))
    stop = threading.Event()
    reload = threading.Event()

    def on_stop(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(_signum: int, _frame: object) -> None:
        reload.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        service.startup()
    except SourceError as exc:
        log.error("camera not available at start: %s", exc)
        service.shutdown(timeout_s=5)
        return 1
    except BaseException:
        service.shutdown(timeout_s=5)
        raise
    # The kernel hands a signal to any thread of the process, but Python runs its handler in the main thread, when
    # that thread next runs Python code: so the main thread never blocks for longer than _SIGNAL_POLL_S. A stop
    # request wins over a reload that arrived with it.
    while not stop.is_set():
        if reload.wait(_SIGNAL_POLL_S) and not stop.is_set():
            reload.clear()
            try:
                log.info("SIGHUP: recipe %s reloaded", service.reload_recipe())
            except ConfigError as exc:
                log.error("SIGHUP: new recipe refused, keeping %s: %s", service.recipe_id, exc)
    service.shutdown()
    return 0
