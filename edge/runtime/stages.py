"""Pieces shared by the cell's stages: the job that travels acquisition -> inference, and timing windows."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edge.acquisition.source import Frame

STOP = object()  # end-of-stream marker passed down the queues on shutdown


@dataclass
class Job:
    """One trigger on its way through the stages; ``error`` set means it becomes an ERROR result."""

    cycle: int
    part_id: str
    trigger_time: float  # UNIX time
    trigger_monotonic: float = field(default_factory=time.monotonic)
    frame: Frame | None = None
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def start_monotonic(self) -> float:
        """Cycle time starts at frame arrival (or at the trigger when no frame came)."""
        return self.frame.arrival_monotonic if self.frame is not None else self.trigger_monotonic


class TimingWindow:
    """The last ``size`` durations (ms) per name, for p50/p99 in STATUS and benchmarks."""

    def __init__(self, size: int = 1000) -> None:
        self._values: dict[str, deque[float]] = {}
        self._size = size
        self._lock = threading.Lock()

    def add(self, name: str, ms: float) -> None:
        with self._lock:
            self._values.setdefault(name, deque(maxlen=self._size)).append(ms)

    def percentile(self, name: str, q: float) -> float | None:
        with self._lock:
            values = list(self._values.get(name, ()))
        return float(np.percentile(values, q)) if values else None

    def summary(self) -> dict[str, dict[str, float]]:
        """{name: {p50, p99, n}} of what the window holds."""
        with self._lock:
            snapshot = {name: list(values) for name, values in self._values.items()}
        return {
            name: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "n": float(len(v))}
            for name, v in snapshot.items() if v
        }
