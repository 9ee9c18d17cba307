"""``cell.yaml``: the configuration of one running cell, validated on load.

Every error is a :class:`~okcell.schema.ConfigError` naming the file and the key (``camera.num_buffers``) and what
was expected. Relative paths are resolved against the folder of the file that gives them.

``release: DIR`` (an installed release, ``okcell bundle install``) takes the configuration from ``DIR/cell.yaml``;
every other top-level key of this file replaces the release's key of the same name (per-device camera, OPC UA,
name), and ``model`` and ``recipe`` come only from the release. ``DIR`` is resolved once (``current`` is a symbolic
link that an install switches), so a running cell keeps the files of the release it started with. See
``docs/cell.md``."""

from __future__ import annotations

from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import Any, Mapping


from edge.acquisition.camera_settings import FeatureSetting
from edge.acquisition.harvester_source import DEVICE_KEYS, CameraSettings
from edge.acquisition.producers import find_producers
from edge.acquisition.source import TRIGGER_MODES, TriggerMode
from edge.runtime.opcua_config import OpcUaConfig, parse_opcua_config
from okcell.schema import ConfigError, read_yaml, require_keys
from okcell.names import BACKENDS, CELL_STAGES

SYNC_MODES = ("normal", "full")
RELEASE_CONFIG = "cell.yaml"  # a release's own cell configuration, in the release folder
RELEASE_ONLY_KEYS = ("model", "recipe")  # keys a device file that names a release may not give
CELL_KEYS = set(RELEASE_ONLY_KEYS)  # required top-level keys of a cell configuration (with the release's merged in)
CELL_OPTIONAL_KEYS = {"name", "state_dir", "camera", "replay", "trigger", "archive", "watchdog", "opcua", "queue_depth",
                      "recipe_public_key"}


@dataclass
class ModelConfig:
    onnx: Path
    backend: str = "auto"
    engine: Path | None = None
    threads: int | None = None


@dataclass
class ReplayConfig:
    images: list[Path]  # one folder, or image files
    rate_hz: float = 10.0
    loop: bool = True


@dataclass
class TriggerConfig:
    mode: TriggerMode = "software"
    source: str = "Line0"
    activation: str | None = None
    timeout_s: float = 2.0  # how long a trigger waits for its frame before it becomes an ERROR result


@dataclass
class ArchiveConfig:
    directory: Path
    quota_mb: float = 2048.0
    ok_sample_every: int = 0  # also store every Nth OK frame (0: none)
    sync: str = "normal"  # SQLite synchronous mode in WAL: normal (default) or full
    min_free_mb: float = 100.0  # keep this much free on the archive's disk: images make way first, then start fails


@dataclass
class WatchdogConfig:
    budgets_s: dict[str, float] = field(default_factory=lambda: {"acquisition": 10.0, "inference": 10.0, "outputs": 10.0})
    recovery_attempts: int = 3
    reconnect_backoff_s: tuple[float, float] = (0.5, 10.0)  # first and longest wait between reconnect attempts


@dataclass
class CellConfig:
    path: Path
    name: str
    model: ModelConfig
    recipe: Path
    trigger: TriggerConfig
    archive: ArchiveConfig
    watchdog: WatchdogConfig
    state_dir: Path
    camera: CameraSettings | None = None
    replay: ReplayConfig | None = None
    opcua: OpcUaConfig | None = None
    queue_depth: int = 4
    recipe_public_key: Path | None = None  # only recipes signed with its private key load
    release: Path | None = None  # the release folder the configuration came from (``release:``), resolved


def load_cell_config(path: Path | str, release: Path | None = None) -> CellConfig:
    """Read and validate ``cell.yaml``; raises ConfigError naming the file and key. ``release`` replaces the file's
    ``release:`` folder (an installer checks a release before switching to it)."""
    path = Path(path)
    data = read_yaml(path, missing="cell config not found")
    if release is None and not (isinstance(data, Mapping) and "release" in data):
        return parse_cell_config(data, path)
    return _with_release(data, path, release)


def check_device_config(path: Path | str) -> Mapping[str, Any]:
    """What can be checked of a device's ``cell.yaml`` away from the device, before it is put into an image: YAML, a
    mapping, only known top-level keys, ``release:`` as an absolute path without ``model``/``recipe``, or else both
    ``model`` and ``recipe``. Files and sections are checked on the device when a release is installed or the cell
    starts (:func:`load_cell_config`). Returns the mapping; raises ConfigError naming the file and key."""
    path = Path(path)
    reader = _Reader(read_yaml(path, missing="cell config not found"), path, "")
    if "release" not in reader.data:
        reader.keys(CELL_KEYS, CELL_OPTIONAL_KEYS)
        return reader.data
    reader.keys({"release"}, CELL_OPTIONAL_KEYS | CELL_KEYS)
    _refuse_release_only_keys(reader)
    folder = reader.data["release"]
    if not isinstance(folder, str) or not folder.startswith("/"):
        raise ConfigError(f"{reader.where('release')} must be an absolute path on the device "
                          f"(/var/lib/okcell/releases/current), found {folder!r}")
    return reader.data


def _refuse_release_only_keys(reader: "_Reader") -> None:
    given = [key for key in RELEASE_ONLY_KEYS if key in reader.data]
    if given:
        raise ConfigError(f"{reader.file}: {', '.join(given)} come(s) from the release named by 'release:'; remove "
                          f"{', '.join(given)} here (or drop 'release:' to configure the cell without releases)")


def _with_release(data: Any, path: Path, override: Path | None) -> CellConfig:
    """The release's ``cell.yaml`` with this file's other keys laid over it (see the module docstring)."""
    reader = _Reader(data, path, "")
    if "release" not in reader.data:
        raise ConfigError(f"{path}: has no 'release:' key, so a release installed under it would never be used; "
                          "set release: /var/lib/okcell/releases/current")
    _refuse_release_only_keys(reader)
    folder = override or reader.path("release", must_exist=None)
    if not folder.is_dir():
        raise ConfigError(f"{reader.where('release')}: release folder {folder} not found (no release installed yet? "
                          "install one with `okcell bundle install BUNDLE`)")
    folder = folder.resolve()
    release_file = folder / RELEASE_CONFIG
    release_data = read_yaml(release_file, missing="the release's cell configuration not found")
    if not isinstance(release_data, Mapping):
        raise ConfigError(f"{release_file}: top level must be a mapping, found {type(release_data).__name__}")
    if "release" in release_data:
        raise ConfigError(f"{release_file}: a release's cell.yaml cannot name another release ('release:')")
    device = {key: value for key, value in reader.data.items() if key != "release"}
    origins = {key: release_file for key in release_data if key not in device}
    config = parse_cell_config({**release_data, **device}, path, origins)
    config.release = folder
    return config


def parse_cell_config(data: Any, path: Path, origins: Mapping[str, Path] | None = None) -> CellConfig:
    """Validate the mapping ``data`` read from ``path``; ``origins`` names the file of top-level keys taken from
    another file (their errors name it and their relative paths resolve against its folder)."""
    reader = _Reader(data, path, "", origins)
    reader.keys(CELL_KEYS, CELL_OPTIONAL_KEYS)
    if "state_dir" in reader.data:
        state_dir = reader.path("state_dir", must_exist=None)
    else:  # systemd's StateDirectory=, else beside the config file
        state_dir = Path(os.environ.get("STATE_DIRECTORY", "").split(":")[0] or path.parent)
    model = reader.section("model")
    model.keys({"onnx"}, {"backend", "engine", "threads"})
    model_config = ModelConfig(
        onnx=model.path("onnx", must_exist="file"),
        backend=model.choice("backend", BACKENDS, "auto"),
        engine=model.path("engine", must_exist=None) if "engine" in model.data else None,
        threads=model.number("threads", int, None, minimum=1),
    )
    recipe = reader.path("recipe", must_exist="dir")
    public_key = reader.path("recipe_public_key", must_exist="file") if "recipe_public_key" in reader.data else None
    trigger = reader.section("trigger", {})
    trigger.keys(set(), {"mode", "source", "activation", "timeout_s"})
    trigger_config = TriggerConfig(
        mode=trigger.choice("mode", TRIGGER_MODES, "software"),  # type: ignore[arg-type]
        source=trigger.string("source", "Line0"),
        activation=trigger.string("activation", None),
        timeout_s=trigger.number("timeout_s", float, 2.0, minimum=0.01),
    )
    has_camera, has_replay = "camera" in reader.data, "replay" in reader.data
    if has_camera == has_replay:
        raise ConfigError(f"{path}: give exactly one of 'camera' (a GenICam camera) or 'replay' (image files)")
    camera = _camera(reader.section("camera"), trigger_config, path) if has_camera else None
    replay = _replay(reader.section("replay")) if has_replay else None
    if replay is not None and trigger_config.mode == "hardware":
        raise ConfigError(f"{path}: trigger.mode: 'hardware' needs a camera; a replay source is 'software' or 'free_run'")
    archive = reader.section("archive", {})
    archive.keys(set(), {"directory", "quota_mb", "ok_sample_every", "sync", "min_free_mb"})
    archive_config = ArchiveConfig(
        directory=archive.path("directory", must_exist=None) if "directory" in archive.data else state_dir / "archive",
        quota_mb=archive.number("quota_mb", float, 2048.0, minimum=1.0),
        ok_sample_every=archive.number("ok_sample_every", int, 0, minimum=0),
        sync=archive.choice("sync", SYNC_MODES, "normal"),
        min_free_mb=archive.number("min_free_mb", float, 100.0, minimum=0.0),
    )
    watchdog = reader.section("watchdog", {})
    watchdog.keys(set(), {"budgets_s", "recovery_attempts", "reconnect_backoff_s"})
    budgets = WatchdogConfig().budgets_s
    if "budgets_s" in watchdog.data:
        section = watchdog.section("budgets_s")
        section.keys(set(), set(CELL_STAGES))
        budgets.update({stage: section.number(stage, float, budgets[stage], minimum=0.1) for stage in CELL_STAGES})
    backoff = watchdog.data.get("reconnect_backoff_s", [0.5, 10.0])
    if (not isinstance(backoff, list) or len(backoff) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in backoff)
            or backoff[0] > backoff[1]):
        raise ConfigError(f"{path}: watchdog.reconnect_backoff_s must be [first, longest] seconds > 0, found {backoff!r}")
    watchdog_config = WatchdogConfig(
        budgets_s=budgets,
        recovery_attempts=watchdog.number("recovery_attempts", int, 3, minimum=1),
        reconnect_backoff_s=(float(backoff[0]), float(backoff[1])),
    )
    return CellConfig(
        path=path,
        name=reader.string("name", path.stem) or path.stem,
        model=model_config,
        recipe=recipe,
        trigger=trigger_config,
        archive=archive_config,
        watchdog=watchdog_config,
        state_dir=state_dir,
        opcua=parse_opcua_config(data.get("opcua"), reader.origin("opcua"), state_dir),
        camera=camera,
        replay=replay,
        queue_depth=reader.number("queue_depth", int, 4, minimum=1),
        recipe_public_key=public_key,
    )


def _camera(camera: "_Reader", trigger: TriggerConfig, path: Path) -> CameraSettings:
    camera.keys(set(), {"producers", "device", "features", "num_buffers"})
    producers = camera.data.get("producers", [])
    if isinstance(producers, str):
        producers = [producers]
    if not isinstance(producers, list) or not all(isinstance(p, str) for p in producers):
        raise ConfigError(f"{path}: camera.producers must be a list of .cti paths, found {producers!r}")
    resolved = [str(camera.resolve(p)) for p in producers]
    device: dict[str, Any] = {}
    if "device" in camera.data:
        section = camera.section("device")
        section.keys(set(), set(DEVICE_KEYS))
        if len(section.data) != 1:
            raise ConfigError(f"{path}: camera.device must name exactly one of {', '.join(DEVICE_KEYS)}")
        (key, value), = section.data.items()
        device[key] = section.number(key, int, None, minimum=0) if key == "index" else section.string(key, None)
    return CameraSettings(
        producers=find_producers(resolved, source=f"{path}: camera.producers"),
        device=device,
        features=_features(camera.data.get("features", []), path),
        trigger_mode=trigger.mode,
        trigger_source=trigger.source,
        trigger_activation=trigger.activation,
        num_buffers=camera.number("num_buffers", int, 8, minimum=1),
        config_source=str(path),
    )


def _features(entries: Any, path: Path) -> list[FeatureSetting]:
    """``- PixelFormat: Mono8`` or ``- {name: ExposureTime, value: 5000, optional: true}``, applied in order."""
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: camera.features must be a list (applied in order), found {type(entries).__name__}")
    settings = []
    for index, entry in enumerate(entries):
        where = f"{path}: camera.features[{index}]"
        if isinstance(entry, Mapping) and "name" in entry:
            require_keys(entry, {"name", "value"}, {"optional"}, where)
            if not isinstance(entry["name"], str) or not isinstance(entry.get("optional", False), bool):
                raise ConfigError(f"{where}: 'name' must be a string and 'optional' true/false, found {dict(entry)!r}")
            settings.append(FeatureSetting(entry["name"], entry["value"], entry.get("optional", False)))
        elif isinstance(entry, Mapping) and len(entry) == 1:
            (name, value), = entry.items()
            settings.append(FeatureSetting(str(name), value))
        else:
            raise ConfigError(f"{where}: expected 'Feature: value' or {{name, value, optional}}, found {entry!r}")
    return settings


def _replay(replay: "_Reader") -> ReplayConfig:
    replay.keys({"images"}, {"rate_hz", "loop"})
    images = replay.data["images"]
    listed = [images] if isinstance(images, str) else images
    if not isinstance(listed, list) or not listed or not all(isinstance(p, str) for p in listed):
        raise ConfigError(f"{replay.file}: replay.images must be a folder or a list of image files, found {images!r}")
    paths = [replay.resolve(p) for p in listed]
    for p in paths:
        if not p.exists():
            raise ConfigError(f"{replay.file}: replay.images: {p} does not exist")
    loop = replay.data.get("loop", True)
    if not isinstance(loop, bool):
        raise ConfigError(f"{replay.file}: replay.loop must be true or false, found {loop!r}")
    return ReplayConfig(images=paths, rate_hz=replay.number("rate_hz", float, 10.0, minimum=0.01), loop=loop)


class _Reader:
    """Typed access to one mapping of the config, naming ``file: prefix.key`` in errors."""

    def __init__(self, data: Any, file: Path, prefix: str, origins: Mapping[str, Path] | None = None) -> None:
        self.file, self.prefix, self.origins = file, prefix, origins or {}
        if not isinstance(data, Mapping):
            where = f"section '{prefix.rstrip('.')}'" if prefix else "top level"
            raise ConfigError(f"{file}: {where} must be a mapping, found {type(data).__name__}")
        self.data = data

    def origin(self, key: str) -> Path:
        """The file ``key`` was read from."""
        return self.origins.get(key, self.file)

    def where(self, key: str) -> str:
        return f"{self.origin(key)}: {self.prefix}{key}"

    def keys(self, required: set[str], optional: set[str]) -> None:
        missing = sorted(required - set(self.data))
        if missing:
            raise ConfigError(f"{self.file}: missing key {', '.join(self.prefix + k for k in missing)}")
        unknown = sorted(set(self.data) - required - optional)
        if unknown:
            raise ConfigError(
                f"{self.file}: unknown key {', '.join(self.prefix + str(k) for k in unknown)}; "
                f"allowed here: {', '.join(sorted(required | optional))}"
            )

    def section(self, key: str, default: Any = None) -> "_Reader":
        return _Reader(self.data.get(key, default), self.origin(key), f"{self.prefix}{key}.")

    def resolve(self, value: str, relative_to: Path | None = None) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else ((relative_to or self.file).parent / p)

    def path(self, key: str, must_exist: str | None) -> Path:
        value = self.data.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where(key)} must be a path (string), found {value!r}")
        p = self.resolve(value, self.origin(key))
        if must_exist == "file" and not p.is_file():
            raise ConfigError(f"{self.where(key)}: file {p} not found")
        if must_exist == "dir" and not p.is_dir():
            raise ConfigError(f"{self.where(key)}: folder {p} not found")
        return p

    def string(self, key: str, default: str | None) -> Any:
        value = self.data.get(key, default)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{self.where(key)} must be a string, found {value!r}")
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.data.get(key, default)
        if value not in options:
            raise ConfigError(f"{self.where(key)} must be one of {', '.join(options)}, found {value!r}")
        return str(value)

    def number(self, key: str, kind: type, default: Any, minimum: float | None = None) -> Any:
        value = self.data.get(key, default)
        if value is None:
            return None
        kinds = (int, float) if kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ConfigError(f"{self.where(key)} must be {'a number' if kind is float else 'an integer'}, found {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{self.where(key)} must be >= {minimum}, found {value!r}")
        return kind(value)
