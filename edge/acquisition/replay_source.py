"""Replaying image files through the frame-source interface, for line trials and tests.

``software`` mode serves the next image per request; ``free_run`` serves them paced at ``rate_hz``
(a self-triggered stream, like a camera). Images are served in name order and cycled when ``loop`` is set.

Each frame is read from disk when it is grabbed, so a trial folder may be larger than memory. A folder is listed
at ``open`` and again at every ``reconnect`` (images added meanwhile join the rotation). An image that cannot be
read at a grab (the folder was renamed or deleted, a network share went away) is a lost camera (``SourceLost``):
the cell answers that trigger with ERROR "camera lost" and reconnects with backoff until the folder is back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edge.acquisition.source import Frame, SourceLost, SourceStats, TriggerMode
from okcell.images import ImageError, list_images, read_image
from okcell.schema import ConfigError


class ReplaySource:
    """A :class:`~edge.acquisition.source.FrameSource` over image files (a folder, or a list of files)."""

    def __init__(self, images: Path | str | Sequence[Path | str], trigger_mode: TriggerMode = "software",
                 rate_hz: float = 10.0, loop: bool = True, config_source: str = "config") -> None:
        if trigger_mode == "hardware":
            raise ConfigError(f"{config_source}: trigger.mode: a replay source has no hardware trigger; use software or free_run")
        if rate_hz <= 0:
            raise ConfigError(f"{config_source}: replay.rate_hz must be > 0, found {rate_hz}")
        if isinstance(images, (str, Path)):
            self.folder: Path | None = Path(images)
            self.paths = list_images(self.folder)
        else:
            self.folder, self.paths = None, [Path(p) for p in images]
        if not self.paths:
            raise ConfigError(f"{config_source}: replay.images: no image files in {images}")
        self.config_source = config_source
        self.trigger_mode: TriggerMode = trigger_mode
        self.period_s = 1.0 / rate_hz
        self.loop = loop
        self.name = f"replay:{self.folder or Path(self.paths[0]).parent}"
        self.stats = SourceStats()
        self._next = 0
        self._due = 0.0

    def open(self) -> None:
        """List the folder (if one was given) and check that every image reads; none is kept in memory.
        SourceLost if the folder or an image is not there; ConfigError naming an image that is there but unusable."""
        try:
            paths = list_images(self.folder) if self.folder is not None else self.paths
            if not paths:
                raise SourceLost(f"{self.name}: no image files in {self.folder}")
            for path in paths:
                read_image(path)
        except ImageError as exc:
            if exc.path.is_file():
                raise ConfigError(f"{self.config_source}: replay.images: {exc}") from None
            raise SourceLost(f"{self.name}: {exc}") from None
        self.paths = paths
        self._next = 0
        self._due = time.monotonic()
        self.stats.connected = True

    def check(self) -> None:
        """Read every image once (ImageError names a bad file), then release them."""
        self.open()
        self.close()

    def grab(self, part_id: str, timeout_s: float) -> Frame:
        if not self.stats.connected:
            raise SourceLost(f"{self.name}: not open")
        if self._next >= len(self.paths):
            if not self.loop:
                raise SourceLost(f"{self.name}: all {len(self.paths)} images served")
            self._next = 0
        if self.trigger_mode == "free_run":
            wait = self._due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._due = max(self._due + self.period_s, time.monotonic())
        index = self._next
        self._next += 1
        image = self._read(self.paths[index])
        self.stats.frames += 1
        return Frame(image=image, part_id=part_id, trigger_time=time.time(), frame_id=index,
                     pixel_format="file", source=str(self.paths[index]))

    def reconnect(self) -> None:
        self.open()
        self.stats.reconnects += 1

    def close(self) -> None:
        self.stats.connected = False

    def _read(self, path: Path) -> np.ndarray:
        """One frame from disk; an image that cannot be read now is a lost camera."""
        try:
            return read_image(path)
        except ImageError as exc:
            self.stats.connected = False
            self.stats.losses += 1
            self.stats.last_error = str(exc)
            raise SourceLost(f"{self.name}: {exc}") from None
