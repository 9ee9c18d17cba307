"""How a running cell learns which recipe to load, and how it says which one it loaded.

Both live in the cell's recipes folder (the folder of the configured ``recipe:``; for a release, the release's
``recipes/``), so that ``okcell recipe push`` and the cell find them from the same cell.yaml:

* ``.active``: a symbolic link to a recipe folder beside it (``okcell recipe push --activate`` switches it
  atomically). When it is there, the cell loads that recipe at start and on SIGHUP instead of ``recipe:``.
* ``.loaded.json``: written by the cell (whole: temporary file + rename) at start and after every recipe switch,
  accepted or refused: its process id, a sequence number, the recipe folder and id, and the reason of a refusal.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from okcell.durable import fsync_dir, point_link
from okcell.schema import ConfigError, read_json

ACTIVE_LINK = ".active"
LOADED_FILE = ".loaded.json"


def selected_recipe(configured: Path) -> Path:
    """The recipe folder the cell loads: the one ``.active`` names beside ``configured``, else ``configured``."""
    link = configured.parent / ACTIVE_LINK
    if link.is_symlink():
        target = configured.parent / os.readlink(link)
        if target.parent == configured.parent and target.is_dir():
            return target
    return configured


def point_active(recipes: Path, name: str | None) -> None:
    """Make ``recipes/.active`` name the recipe folder ``name`` (None: remove it, back to ``recipe:``)."""
    point_link(recipes / ACTIVE_LINK, name)


def active_name(recipes: Path) -> str | None:
    link = recipes / ACTIVE_LINK
    return os.readlink(link) if link.is_symlink() else None


@dataclass(frozen=True)
class LoadedRecipe:
    """``.loaded.json``: what the cell process ``pid`` did at its ``sequence``-th recipe load."""

    pid: int
    sequence: int
    recipe: str  # folder name (what OPC UA ActivateRecipe takes)
    recipe_id: str  # the recipe's manifest id ("" if refused before it loaded)
    accepted: bool
    error: str  # why it was refused ("" when accepted)


class LoadedRecorder:
    """Writes ``.loaded.json`` for one cell process."""

    def __init__(self) -> None:
        self.sequence = 0

    def record(self, recipe_dir: Path, recipe_id: str, error: str = "") -> None:
        """Record a load of ``recipe_dir``; a failure to write is an OSError for the caller to log, never fatal."""
        self.sequence += 1
        entry = LoadedRecipe(os.getpid(), self.sequence, recipe_dir.name, recipe_id, not error, error)
        path = recipe_dir.parent / LOADED_FILE
        temporary = path.with_name(f"{LOADED_FILE}.{os.getpid()}")
        temporary.write_text(json.dumps(asdict(entry)) + "\n")
        os.replace(temporary, path)
        fsync_dir(path.parent)


def read_loaded(recipes: Path) -> LoadedRecipe | None:
    """What the cell last reported in ``recipes``, None if nothing (yet); ConfigError for an unreadable file."""
    path = recipes / LOADED_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    try:
        return LoadedRecipe(**data)
    except TypeError as exc:
        raise ConfigError(f"{path}: not a recipe load record ({exc})") from None
