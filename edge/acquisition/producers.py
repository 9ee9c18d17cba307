"""Finding GenTL producers (.cti files): from the cell config, else from ``GENICAM_GENTL64_PATH``."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

from okcell.schema import ConfigError

GENTL_PATH_VARIABLE = "GENICAM_GENTL64_PATH"


def viky_producer() -> Path:
    """``viky.cti``, the GenTL producer with virtual cameras that the ``genicam`` package ships (tests, benchmarks)."""
    spec = importlib.util.find_spec("genicam")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the virtual viky cameras need the genicam package (pip install genicam)")
    return Path(spec.submodule_search_locations[0]) / "viky.cti"


def find_producers(configured: Sequence[str | Path] = (), source: str = "config") -> list[Path]:
    """The .cti files to load: ``configured`` paths (files, or folders holding .cti files) if given,
    else every .cti in the folders of ``$GENICAM_GENTL64_PATH``. Raises ConfigError when none is found."""
    if configured:
        found: list[Path] = []
        for entry in configured:
            path = Path(entry)
            if path.is_dir():
                in_dir = sorted(path.glob("*.cti"))
                if not in_dir:
                    raise ConfigError(f"{source}: producer folder {path} holds no .cti file")
                found.extend(in_dir)
            elif path.is_file() and path.suffix == ".cti":
                found.append(path)
            else:
                raise ConfigError(f"{source}: producer {path} is not a .cti file or a folder of them")
        return found
    folders = [Path(p) for p in os.environ.get(GENTL_PATH_VARIABLE, "").split(os.pathsep) if p]
    found = [cti for folder in folders if folder.is_dir() for cti in sorted(folder.glob("*.cti"))]
    if not found:
        raise ConfigError(
            f"{source}: no GenTL producer: set camera.producers to the camera vendor's .cti file, "
            f"or {GENTL_PATH_VARIABLE} (now {os.environ.get(GENTL_PATH_VARIABLE, 'unset')!r}) to folders holding one"
        )
    return found
