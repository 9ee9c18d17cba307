"""GenICam cameras through harvesters (GenTL): device selection, features, trigger modes, buffers, reconnects.

Trigger modes (see :mod:`edge.acquisition.source`): ``software`` executes ``TriggerSoftware`` per request when
the camera has it (``TriggerMode=On``, ``TriggerSource=Software``); a camera without that command streams and the
request takes the next frame completed after it (frames queued before the request are discarded, not counted as
drops). ``hardware`` sets ``TriggerMode=On`` on the configured line and returns frames in arrival order.
``free_run`` sets ``TriggerMode=Off`` (if the camera has it) and keeps the newest frame: older unread frames are
dropped and counted, also gaps in the producer's frame ids.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genicam.gentl import TimeoutException
from harvesters.core import Buffer, Harvester, ImageAcquirer

from edge.acquisition.camera_settings import FeatureSetting, apply_features, feature_names
from edge.acquisition.pixel_formats import to_frame
from edge.acquisition.source import Frame, SourceLost, SourceStats, SourceTimeout, TriggerMode
from okcell.schema import ConfigError

log = logging.getLogger(__name__)
DEVICE_KEYS = ("serial_number", "user_defined_name", "model", "index")
_DRAIN_TIMEOUT_S = 0.0005


@dataclass
class CameraSettings:
    """Everything needed to open one camera (built from ``cell.yaml``'s ``camera`` section)."""

    producers: list[Path]
    device: dict[str, Any]  # one of DEVICE_KEYS -> value; empty: the first device
    features: list[FeatureSetting] = field(default_factory=list)
    trigger_mode: TriggerMode = "software"
    trigger_source: str = "Line0"  # hardware mode: the input line
    trigger_activation: str | None = None  # e.g. RisingEdge
    num_buffers: int = 8
    config_source: str = "config"  # file name used in error messages


class HarvesterSource:
    """A :class:`~edge.acquisition.source.FrameSource` on a GenTL producer."""

    def __init__(self, settings: CameraSettings) -> None:
        self.settings = settings
        self.trigger_mode: TriggerMode = settings.trigger_mode
        self.name = f"genicam:{_selector_text(settings.device)}"
        self.stats = SourceStats()
        self.applied_features: dict[str, Any] = {}
        self.uses_trigger_software = False
        self._harvester: Harvester | None = None
        self._acquirer: ImageAcquirer | None = None
        self._last_frame_id: int | None = None

    @property
    def acquirer(self) -> ImageAcquirer | None:
        """The live harvesters acquirer (None while disconnected)."""
        return self._acquirer

    def open(self) -> None:
        """Discover, open, configure and start the device; on any failure everything opened is released."""
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def check(self) -> None:
        """Discover, open and configure the device without acquiring, then release it; raises what ``open`` would."""
        try:
            self._configure()
        finally:
            self.close()
        log.info("%s: checked (%s trigger), features %s", self.name, self.trigger_mode, self.applied_features)

    def _configure(self) -> ImageAcquirer:
        harvester = Harvester()
        self._harvester = harvester
        for cti in self.settings.producers:
            harvester.add_file(str(cti), check_existence=True)
        harvester.update()
        key = self._device_key(harvester)
        try:
            acquirer = harvester.create(key)
        except Exception as exc:  # the producer refuses (device busy, gone between update and create)
            raise SourceLost(f"{self.name}: cannot open the device: {exc}") from exc
        self._acquirer = acquirer
        node_map = acquirer.remote_device.node_map
        source = self.settings.config_source
        self.applied_features = apply_features(node_map, self.settings.features, source)
        self._configure_trigger(node_map, source)
        return acquirer

    def _open(self) -> None:
        acquirer = self._configure()
        acquirer.num_buffers = max(self.settings.num_buffers, 1)
        acquirer.start()
        self._last_frame_id = None
        self.stats.connected = True
        log.info("%s: acquiring (%s trigger%s), features %s", self.name, self.trigger_mode,
                 ", TriggerSoftware" if self.uses_trigger_software else "", self.applied_features)

    def grab(self, part_id: str, timeout_s: float) -> Frame:
        acquirer = self._acquirer
        if acquirer is None or not acquirer.is_valid():
            raise self._lost("the acquirer is closed", acquirer)
        try:
            trigger_time = time.time()
            if self.trigger_mode == "software":
                if self.uses_trigger_software:
                    acquirer.remote_device.node_map.get_node("TriggerSoftware").execute()
                else:
                    self._discard_queued(acquirer)
                buffer = self._fetch(acquirer, timeout_s)
            elif self.trigger_mode == "hardware":
                buffer = self._fetch(acquirer, timeout_s)
                trigger_time = time.time()
            else:
                buffer = self._newest(acquirer, timeout_s)
                trigger_time = time.time()
            with buffer:
                frame = self._to_frame(buffer, part_id, trigger_time)
        except (SourceTimeout, SourceLost):
            raise
        except Exception as exc:  # any producer error: handle invalid, device removed, stream aborted
            raise self._lost(f"{type(exc).__name__}: {exc}", acquirer) from exc
        self.stats.frames += 1
        return frame

    def reconnect(self) -> None:
        self.close()
        try:
            self.open()
        except (ConfigError, SourceLost):
            raise
        except Exception as exc:
            raise SourceLost(f"{self.name}: reconnect failed: {type(exc).__name__}: {exc}") from exc
        self.stats.reconnects += 1

    def close(self) -> None:
        acquirer, harvester = self._acquirer, self._harvester
        self._acquirer = self._harvester = None
        self.stats.connected = False
        for action in (getattr(acquirer, "destroy", None), getattr(harvester, "reset", None)):
            if action is None:
                continue
            try:
                action()
            except Exception as exc:  # the device may already be gone; closing must not fail
                log.debug("%s: ignored while closing: %s", self.name, exc)

    # internals

    def _device_key(self, harvester: Harvester) -> int | dict[str, Any]:
        devices = harvester.device_info_list
        properties = [d.property_dict for d in devices]  # None where the producer does not report a field
        available = "; ".join(
            f"[{i}] model={p.get('model')!r} serial_number={p.get('serial_number')!r} "
            f"user_defined_name={p.get('user_defined_name')!r}"
            for i, p in enumerate(properties)
        ) or "none"
        selector = self.settings.device
        if not devices:
            raise SourceLost(f"{self.name}: the producer(s) {', '.join(map(str, self.settings.producers))} list no device")
        if not selector:
            return 0
        (key, value), = selector.items()
        if key == "index":
            if not 0 <= value < len(devices):
                raise ConfigError(
                    f"{self.settings.config_source}: camera.device.index {value}: only {len(devices)} "
                    f"camera{'s' if len(devices) > 1 else ''} found; devices: {available}"
                )
            return int(value)
        matches = [i for i, p in enumerate(properties) if p.get(key) is not None and str(p.get(key)) == str(value)]
        if not matches:
            raise SourceLost(f"{self.name}: no device with {key}={value!r}; devices: {available}")
        if len(matches) > 1:
            raise ConfigError(
                f"{self.settings.config_source}: camera.device {key}={value!r} matches {len(matches)} devices; "
                f"select by serial_number instead; devices: {available}"
            )
        return matches[0]

    def _configure_trigger(self, node_map: Any, source: str) -> None:
        has = node_map.has_node
        self.uses_trigger_software = False
        selector = [FeatureSetting("TriggerSelector", "FrameStart", optional=True)] if has("TriggerSelector") else []
        if self.trigger_mode == "hardware":
            if not (has("TriggerMode") and has("TriggerSource")):
                raise ConfigError(
                    f"{source}: trigger.mode: 'hardware' needs TriggerMode and TriggerSource, which this camera lacks; "
                    f"use 'software' or 'free_run'. It offers: {', '.join(feature_names(node_map))}"
                )
            settings = selector + [
                FeatureSetting("TriggerMode", "On"),
                FeatureSetting("TriggerSource", self.settings.trigger_source),
            ]
            if self.settings.trigger_activation:
                settings.append(FeatureSetting("TriggerActivation", self.settings.trigger_activation))
        elif self.trigger_mode == "software" and has("TriggerSoftware") and has("TriggerMode"):
            settings = selector + [FeatureSetting("TriggerMode", "On"), FeatureSetting("TriggerSource", "Software")]
            self.uses_trigger_software = True
        else:  # free run, or software on a camera without TriggerSoftware: stream, take the next frame per request
            settings = [FeatureSetting("TriggerMode", "Off", optional=True)]
        self.applied_features.update(apply_features(node_map, settings, source))

    def _fetch(self, acquirer: ImageAcquirer, timeout_s: float) -> Buffer:
        try:
            buffer = acquirer.fetch(timeout=timeout_s)
        except TimeoutException:
            self.stats.timeouts += 1
            raise SourceTimeout(f"{self.name}: no frame within {timeout_s:.2f} s") from None
        if buffer is None:
            raise self._lost("the producer returned no buffer", acquirer)
        return buffer

    def _newest(self, acquirer: ImageAcquirer, timeout_s: float) -> Buffer:
        """The newest frame. If every buffer was full the producer stopped filling them, so the newest held
        frame may be old: it is dropped too and the next fresh frame is taken."""
        newest = self._fetch(acquirer, timeout_s)
        held = 1
        while (newer := acquirer.try_fetch(timeout=_DRAIN_TIMEOUT_S)) is not None:
            newest = self._replace(newest, newer)
            held += 1
        if held >= acquirer.num_buffers:
            try:
                fresh = self._fetch(acquirer, timeout_s)
            except SourceTimeout:
                return newest  # no fresher frame came: the held one is still the newest
            newest = self._replace(newest, fresh)
        return newest

    def _replace(self, older: Buffer, newer: Buffer) -> Buffer:
        older.queue()
        if _frame_id(newer) is None:  # without frame ids, count what we discard (with them, gaps are counted)
            self.stats.dropped += 1
        return newer

    def _discard_queued(self, acquirer: ImageAcquirer) -> None:
        while (stale := acquirer.try_fetch(timeout=_DRAIN_TIMEOUT_S)) is not None:
            stale.queue()
            self._last_frame_id = None  # skipped on purpose: not a drop

    def _to_frame(self, buffer: Buffer, part_id: str, trigger_time: float) -> Frame:
        component = buffer.payload.components[0]
        pixel_format = component.data_format
        image = to_frame(component.data, component.width, component.height, pixel_format)
        frame_id = _frame_id(buffer)
        if frame_id is not None:
            if self._last_frame_id is not None and frame_id > self._last_frame_id + 1:
                self.stats.dropped += frame_id - self._last_frame_id - 1
            self._last_frame_id = frame_id
        return Frame(image=image, part_id=part_id, trigger_time=trigger_time, frame_id=frame_id,
                     pixel_format=pixel_format, source=self.name)

    def _lost(self, reason: str, acquirer: ImageAcquirer | None) -> SourceLost:
        if acquirer is not None and acquirer is not self._acquirer:
            return SourceLost(f"{self.name}: stale acquirer (already reconnected): {reason}")
        self.stats.losses += 1
        self.stats.connected = False
        self.stats.last_error = reason
        return SourceLost(f"{self.name}: device lost: {reason}")


def _frame_id(buffer: Buffer) -> int | None:
    try:
        return int(buffer.frame_id)
    except Exception:  # producers may not report frame ids
        return None


def _selector_text(device: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in device.items()) or "first"
