"""Result outputs (archive, OPC UA server, PLC client, ...) share one small interface."""

from __future__ import annotations

from typing import Protocol

from okcell.result import CellResult


class ResultSink(Protocol):
    """Receives every cell result in cycle order. ``publish`` must not block the inspection stages
    for long: slow work (network, disk) goes to the sink's own thread or event loop."""

    name: str

    def start(self) -> None: ...

    def publish(self, result: CellResult) -> None: ...

    def stop(self) -> None: ...
