"""Applying camera features from the config in order, reading them back, and describing a camera's node map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genicam import genapi

from okcell.schema import ConfigError

_VALUE_TYPES = (genapi.IInteger, genapi.IFloat, genapi.IEnumeration, genapi.IBoolean, genapi.IString)
MAIN_FEATURES = (
    "DeviceModelName", "DeviceSerialNumber", "DeviceUserID", "PixelFormat", "Width", "Height", "OffsetX", "OffsetY",
    "ExposureTime", "Gain", "AcquisitionFrameRate", "TriggerMode", "TriggerSource", "TriggerActivation",
)


@dataclass(frozen=True)
class FeatureSetting:
    """One ``camera.features`` entry: set ``name`` to ``value``; a missing node is an error unless ``optional``."""

    name: str
    value: Any
    optional: bool = False


def feature_names(node_map: Any) -> list[str]:
    """Readable, user-visible value features of a node map, sorted."""
    names = []
    for node in node_map.nodes:
        if not isinstance(node, _VALUE_TYPES) or not genapi.is_readable(node):
            continue
        if node.node.visibility == genapi.EVisibility.Invisible:
            continue
        names.append(node.node.name)
    return sorted(names)


def read_feature(node_map: Any, name: str) -> Any:
    """Current value of a feature, or None if the camera lacks it or it is not readable now."""
    if not node_map.has_node(name):
        return None
    node = node_map.get_node(name)
    if not isinstance(node, _VALUE_TYPES) or not genapi.is_readable(node):
        return None
    return node.value


def describe(node_map: Any) -> dict[str, Any]:
    """The main features (those the camera has) with their values, for ``okcell cameras``."""
    values = {}
    for name in MAIN_FEATURES:
        value = read_feature(node_map, name)
        if value is not None:
            values[name] = value
    if node_map.has_node("PixelFormat"):
        values["PixelFormat options"] = list(node_map.get_node("PixelFormat").symbolics)
    return values


def apply_features(node_map: Any, settings: list[FeatureSetting], source: str) -> dict[str, Any]:
    """Write each setting in order and read it back. Returns {name: read-back value}; skipped optional
    features are absent. Raises ConfigError naming ``source``, the feature and what the camera offers."""
    applied: dict[str, Any] = {}
    for setting in settings:
        if not node_map.has_node(setting.name):
            if setting.optional:
                continue
            raise ConfigError(
                f"{source}: camera.features: the camera has no feature {setting.name!r} (mark it optional: true to "
                f"skip it on cameras without it); it offers: {', '.join(feature_names(node_map))}"
            )
        applied[setting.name] = _write(node_map.get_node(setting.name), setting, source)
    return applied


def _write(node: Any, setting: FeatureSetting, source: str) -> Any:
    where = f"{source}: camera.features.{setting.name}"
    if isinstance(node, genapi.ICommand):
        if setting.value not in (True, "execute"):
            raise ConfigError(f"{where}: is a command; give the value 'execute' to run it")
        node.execute()
        return "executed"
    if not isinstance(node, _VALUE_TYPES):
        raise ConfigError(f"{where}: is not a value feature (it is a {type(node).__name__})")
    if not genapi.is_writable(node):
        current = node.value if genapi.is_readable(node) else "unreadable"
        raise ConfigError(f"{where}: is not writable now (current value {current!r})")
    value = setting.value
    if isinstance(node, genapi.IEnumeration):
        options = list(node.symbolics)
        if str(value) not in options:
            raise ConfigError(f"{where}: value {value!r} is not offered; the camera offers: {', '.join(options)}")
        node.value = str(value)
    elif isinstance(node, genapi.IInteger):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        low, high, step = node.min, node.max, node.inc
        if not low <= value <= high or (value - low) % step:
            raise ConfigError(f"{where}: value {value} outside the camera's range {low}..{high} (step {step})")
        node.value = value
    elif isinstance(node, genapi.IFloat):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        if not node.min <= value <= node.max:
            raise ConfigError(f"{where}: value {value} outside the camera's range {node.min}..{node.max}")
        node.value = float(value)
    elif isinstance(node, genapi.IBoolean):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {value!r}")
        node.value = value
    else:
        node.value = str(value)
    return node.value
