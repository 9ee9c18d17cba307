"""The frame-source interface every acquisition backend implements (GenICam camera, image replay).

A source delivers one :class:`Frame` per trigger. Who triggers depends on ``trigger_mode``:

* ``software`` — the cell asks: ``grab(part_id)`` fires the trigger and waits for its frame. On a camera with a
  ``TriggerSoftware`` command that command is executed; on a camera without one (e.g. free-running virtual cameras)
  the source discards frames queued before the request and returns the next frame completed after it.
* ``hardware`` — the camera's input line triggers; ``grab`` returns the next frame in arrival order (none dropped).
* ``free_run`` — the camera streams; ``grab`` returns the newest frame, older unread frames are dropped and counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

TriggerMode = Literal["software", "hardware", "free_run"]
TRIGGER_MODES: tuple[str, ...] = ("software", "hardware", "free_run")


class SourceError(RuntimeError):
    """A frame could not be delivered."""


class SourceTimeout(SourceError):
    """No frame arrived within the fetch timeout."""


class SourceLost(SourceError):
    """The device or producer failed; the source must be reconnected before the next grab."""


@dataclass
class Frame:
    """One acquired image (uint8 RGB (H, W, 3) or mono (H, W)) and where it came from."""

    image: np.ndarray
    part_id: str
    trigger_time: float  # UNIX time of the trigger (request, or frame arrival for self-triggered sources)
    frame_id: int | None  # the producer's frame counter, if it has one
    arrival_monotonic: float = field(default_factory=time.monotonic)  # when the frame was in our hands
    pixel_format: str = ""
    source: str = ""


@dataclass
class SourceStats:
    """Counters a source keeps for the cell status."""

    frames: int = 0
    dropped: int = 0  # free-run frames overwritten by newer ones, or gaps in the producer's frame ids
    timeouts: int = 0
    losses: int = 0
    reconnects: int = 0
    connected: bool = False
    last_error: str | None = None


class FrameSource(Protocol):
    """Camera or replay: open, grab one frame per trigger, reconnect after a loss, close."""

    name: str
    trigger_mode: TriggerMode
    stats: SourceStats

    def open(self) -> None:
        """Connect and start acquisition; raises ConfigError for bad settings, SourceLost if the device is absent."""
        ...

    def check(self) -> None:
        """Connect and apply the settings without acquiring, then disconnect; raises what ``open`` would."""
        ...

    def grab(self, part_id: str, timeout_s: float) -> Frame:
        """The frame for the next trigger (software: fire it now). Raises SourceTimeout or SourceLost."""
        ...

    def reconnect(self) -> None:
        """Close, re-discover and reopen once; raises SourceLost if the device is still unavailable."""
        ...

    def close(self) -> None:
        ...
