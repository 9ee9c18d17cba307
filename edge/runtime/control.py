"""What the OPC UA server needs from the running cell, and the flat result record it publishes."""

from __future__ import annotations

import math
import time
import unicodedata
from dataclasses import dataclass
from typing import Protocol

from okcell.names import DECISIONS, CellState, Decision
from okcell.result import CellResult

MAX_PART_ID = 256  # characters


class TriggerRefused(RuntimeError):
    """The cell cannot take a trigger now (not Operational, shutting down); nothing was queued."""


class InvalidPartId(ValueError):
    """A part id over :data:`MAX_PART_ID` characters or with a control character; nothing was queued."""


def check_part_id(part_id: str) -> str:
    """Return ``part_id`` if it may name a part (archive, results, events), else raise :class:`InvalidPartId`.
    Every path that takes a part id from outside (Trigger method, handshake variable, ``request_trigger``) uses it."""
    if len(part_id) > MAX_PART_ID:
        raise InvalidPartId(f"part id has {len(part_id)} characters; at most {MAX_PART_ID} are allowed")
    bad = next((c for c in part_id if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise InvalidPartId(f"part id contains the control character {bad!r} at position {part_id.index(bad)}")
    return part_id


@dataclass(frozen=True)
class CellStatus:
    """A snapshot of the cell for the State, Recipes and Diagnostics nodes."""

    state: CellState
    error_text: str
    camera_connected: bool
    backend: str
    active_recipe: str
    available_recipes: tuple[str, ...]
    fetch_timeouts: int
    reconnects: int
    counts: dict[Decision, int]  # results published since start, by decision
    cycle_p50_ms: float | None  # over the cell's recent cycles; None before the first
    cycle_p99_ms: float | None


class CellControl(Protocol):
    """Commands from OPC UA to the cell; every method may be called from a worker thread (never the cell's own)."""

    def request_trigger(self, part_id: str) -> int:
        """Queue one software trigger; return its result id (= cycle). Raise :class:`TriggerRefused` if not possible,
        :class:`InvalidPartId` if :func:`check_part_id` refuses ``part_id``."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def reset(self) -> None:
        """Acknowledge an error and re-initialise."""
        ...

    def activate_recipe(self, recipe_id: str) -> None:
        """Load and switch to ``recipe_id``; raise ``ConfigError`` (current recipe stays) if it is unknown or bad."""
        ...

    def status(self) -> CellStatus:
        """Cheap, thread-safe snapshot."""
        ...


@dataclass(frozen=True)
class ResultRecord:
    """The published part of a :class:`CellResult` (no frame, no anomaly map): built on the hot path, so cheap."""

    result_id: int
    cycle: int
    part_id: str
    recipe_id: str
    timestamp: float  # UNIX time of the trigger
    processing_ms: float  # the cell's cycle time (timings_ms["cycle"]), else trigger -> publish
    decision: str
    score: float  # NaN when there is none (ERROR)
    threshold: float
    nearest_label: str
    heatmap_path: str
    error: str

    @classmethod
    def from_cell_result(cls, result: CellResult, now: float | None = None) -> "ResultRecord":
        inspection = result.inspection
        published = time.time() if now is None else now
        return cls(
            result_id=result.result_id,
            cycle=result.cycle,
            part_id=result.part_id,
            recipe_id=result.recipe_id,
            timestamp=result.timestamp,
            processing_ms=float(inspection.timings_ms.get("cycle", max(0.0, (published - result.timestamp) * 1000.0))),
            decision=inspection.decision,
            score=math.nan if inspection.score is None else float(inspection.score),
            threshold=float(inspection.threshold),
            nearest_label=inspection.nearest_label or "",
            heatmap_path=result.heatmap_path or "",
            error=inspection.error or "",
        )

    @property
    def decision_code(self) -> int:
        return DECISIONS.index(self.decision)
