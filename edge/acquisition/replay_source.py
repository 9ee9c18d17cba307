"""Replaying image files through the frame-source interface, for line trials and tests.

``software`` mode serves the next image per request; ``free_run`` serves them paced at ``rate_hz``
(a self-triggered stream, like a camera). Images are read once and cycled when ``loop`` is set."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edge.acquisition.source import Frame, SourceLost, SourceStats, TriggerMode
from okcell.images import list_images, read_image
from okcell.schema import ConfigError


class ReplaySource:
    """A :class:`~edge.acquisition.source.FrameSource` over image files."""

    def __init__(self, images: Path | str | Sequence[Path | str], trigger_mode: TriggerMode = "software",
                 rate_hz: float = 10.0, loop: bool = True, config_source: str = "config") -> None:
        if trigger_mode == "hardware":
            raise ConfigError(f"{config_source}: trigger.mode: a replay source has no hardware trigger; use software or free_run")
        if rate_hz <= 0:
            raise ConfigError(f"{config_source}: replay.rate_hz must be > 0, found {rate_hz}")
        self.paths = list_images(images) if isinstance(images, (str, Path)) else [Path(p) for p in images]
        if not self.paths:
            raise ConfigError(f"{config_source}: replay.images: no image files in {images}")
        self.trigger_mode: TriggerMode = trigger_mode
        self.period_s = 1.0 / rate_hz
        self.loop = loop
        self.name = f"replay:{Path(self.paths[0]).parent}"
        self.stats = SourceStats()
        self._images: list[np.ndarray] = []
        self._next = 0
        self._due = 0.0

    def open(self) -> None:
        self._images = [read_image(p) for p in self.paths]  # ImageError names the bad file
        self._next = 0
        self._due = time.monotonic()
        self.stats.connected = True

    def check(self) -> None:
        """Read every image once (ImageError names a bad file), then release them."""
        self.open()
        self.close()

    def grab(self, part_id: str, timeout_s: float) -> Frame:
        if not self._images:
            raise SourceLost(f"{self.name}: not open")
        if self._next >= len(self._images):
            if not self.loop:
                raise SourceLost(f"{self.name}: all {len(self._images)} images served")
            self._next = 0
        if self.trigger_mode == "free_run":
            wait = self._due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._due = max(self._due + self.period_s, time.monotonic())
        index = self._next
        self._next += 1
        self.stats.frames += 1
        return Frame(image=self._images[index].copy(), part_id=part_id, trigger_time=time.time(), frame_id=index,
                     pixel_format="file", source=str(self.paths[index]))

    def reconnect(self) -> None:
        self.open()
        self.stats.reconnects += 1

    def close(self) -> None:
        self._images = []
        self.stats.connected = False
