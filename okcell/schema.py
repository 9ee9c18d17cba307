"""Validation of dict-shaped files (sidecars, manifests, cell configs) with errors that name the file and field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml


class ConfigError(ValueError):
    """A file or value is not what okcell expects; the message names the file, field and expectation."""


def require_keys(data: Mapping[str, Any], required: set[str], optional: set[str], source: Path | str) -> None:
    """Raise ConfigError if ``data`` lacks a required key or holds an unknown one."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at top level, found {type(data).__name__}")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{source}: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(data) - required - optional)
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")


def typed(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], source: Path | str) -> Any:
    """Return ``data[key]`` if it is of ``kind`` (bools are never accepted as numbers)."""
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{source}: field '{key}' must be {names}, found {value!r}")
    return value


def require_format(data: Mapping[str, Any], expected: int, source: Path | str) -> None:
    """Raise ConfigError unless ``data['format_version']`` is the integer ``expected``."""
    if typed(data, "format_version", int, source) != expected:
        raise ConfigError(f"{source}: field 'format_version' is {data['format_version']}, expected {expected}")


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_bytes(path: Path, missing: str = "not found") -> bytes:
    """The bytes of ``path``; a missing file is the ConfigError ``"{path}: {missing}"``, an unreadable one names it too."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {missing}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parse(content: bytes, path: Path, parse: Callable[[str], Any], kind: str, errors: tuple[type[Exception], ...]) -> Any:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); expected {kind}") from None
    try:
        return parse(text)
    except errors as exc:
        raise ConfigError(f"{path}: not valid {kind} ({exc})") from None


def parse_json(content: bytes, path: Path) -> Any:
    """``content`` (read from ``path``) as JSON; not UTF-8 or not JSON is a ConfigError naming ``path``."""
    return _parse(content, path, json.loads, "JSON", (json.JSONDecodeError,))


def read_json(path: Path, missing: str = "not found") -> Any:
    """Parsed JSON of ``path``; any fault (missing, unreadable, not UTF-8, not JSON) is a ConfigError naming it."""
    return parse_json(read_bytes(path, missing), path)


def read_yaml(path: Path, missing: str = "not found") -> Any:
    """Parsed YAML of ``path``, with the same errors as :func:`read_json`."""
    return _parse(read_bytes(path, missing), path, yaml.safe_load, "YAML", (yaml.YAMLError,))
