"""What one inspection and one cell cycle produce."""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from okcell.names import Decision

@dataclass
class InspectionResult:
    """Decision for one frame. ``ERROR`` carries ``error``; it never counts as OK."""

    decision: Decision
    score: float | None
    threshold: float
    nearest_label: str | None = None
    anomaly_map: np.ndarray | None = None  # float32 (H, W) in ROI pixel coordinates
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class CellResult:
    """One trigger's outcome in a running cell: exactly one per trigger."""

    cycle: int  # also the result id: reserved in the archive before it is handed out, never reused
    part_id: str
    timestamp: float  # UNIX time of the trigger
    recipe_id: str
    inspection: InspectionResult
    frame: np.ndarray | None = None  # the inspected frame (for the archive), RGB or mono uint8
    heatmap_path: str | None = None  # set once the archive has written the overlay

    @property
    def result_id(self) -> int:
        """The id clients see (OPC UA ResultId): the cycle number."""
        return self.cycle

    @property
    def decision(self) -> Decision:
        return self.inspection.decision
