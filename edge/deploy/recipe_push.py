"""``okcell recipe push``: a recipe onto a cell without a whole release, through the same verify -> self-test ->
switch -> confirm path as ``okcell bundle install`` (and back when the cell does not take it).

One line ``step NAME: ...`` per step on stdout:

1. ``verify``   the device's cell.yaml loads; the recipe loads with the cell's model (file hashes, recipe id, model
   sha256, value ranges) and the cell's ``recipe_public_key``; with ``--public-key`` (default
   ROOT/etc/okcell/okcell.pub where it exists) its signature must verify with that key too; it carries golden
   images (``selftest/golden.json``, :mod:`edge.runtime.golden`)
2. ``copy``     into ``RECIPES/.NAME.partial-<pid>`` (RECIPES: the folder of the cell's recipe), every file fsynced
3. ``selftest`` the copy loads again and its golden images give their decisions and scores with the cell's model and
   backend (the check of ``okcell bundle install``)
4. ``publish``  renamed to ``RECIPES/NAME``. A folder of that name with other content is refused; with the same
   content the copy is dropped and nothing changes
5. ``switch``   (``--activate``) ``RECIPES/.active`` -> NAME (:mod:`edge.runtime.recipe_switch`; atomic)
6. ``reload``   ``systemctl reload okcell.service`` or SIGHUP to the cell process
7. ``confirm``  wait until the cell reports NAME loaded (``RECIPES/.loaded.json``); if it refuses it, does not
   answer in time or is not running, ``.active`` goes back, the cell is asked to reload again, and the push fails
   saying why

Killed before ``switch``, the cell never sees the new recipe (a partial copy has a dot name and is removed by the next
push). Killed after, ``.active`` names the old or the new recipe, each whole and self-tested.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edge.backends.select import open_extractor
from edge.deploy.bundle import InstallError, remove_tree
from edge.deploy.releases import CONFIG_FILE, PUBLIC_KEY_FILE, ReleaseStore, chown_like
from edge.deploy.service import CellReloader, SignalCell
from edge.runtime.cell_config import CellConfig, load_cell_config
from edge.runtime.golden import GOLDEN_FILE, SelftestFailed, check_recipe, load_recipe_golden
from edge.runtime.inspector import Inspector
from edge.runtime.recipe_switch import ACTIVE_LINK, LOADED_FILE, active_name, point_active, read_loaded
from okcell.durable import copy_tree_durably
from okcell.recipe import MANIFEST_FILE, Recipe, publish, staging_directory
from okcell.schema import ConfigError, sha256_file
from okcell.sidecar import ModelSidecar, load_verified
from okcell.signing import load_public_key, verify_file

STEPS = ("verify", "copy", "selftest", "publish", "switch", "reload", "confirm")
_POLL_S = 0.2


@dataclass
class PushOptions:
    root: Path = Path("/")
    config: Path | None = None  # the device's cell.yaml; default ROOT/etc/okcell/cell.yaml
    public_key: Path | None = None  # default: ROOT/etc/okcell/okcell.pub where it exists
    activate: bool = False
    reloader: CellReloader = field(default_factory=SignalCell)
    timeout_s: float = 120.0

    @property
    def device_config(self) -> Path:
        return self.config or self.root / CONFIG_FILE

    @property
    def key(self) -> Path | None:
        default = self.root / PUBLIC_KEY_FILE
        return self.public_key or (default if default.is_file() else None)


class RecipePusher:
    """Pushes recipes into the cell whose cell.yaml is ``options.device_config``; ``say`` gets one line per step."""

    def __init__(self, options: PushOptions, say: Callable[[str], None] = print) -> None:
        self.options = options
        self.say = say

    def step(self, name: str, text: str) -> None:
        self.say(f"step {name}: {text}")

    def push(self, source: Path) -> str:
        """Push the recipe folder ``source`` (named by its folder) and with ``activate`` switch the cell to it;
        returns the name. ConfigError (a bad recipe, key or config) or InstallError (a failed step; the cell keeps
        or returns to its recipe) say why not."""
        if self.options.activate:
            self.options.reloader.check()
        with ReleaseStore(self.options.root).lock():
            self.step("verify", str(source))
            config = load_cell_config(self.options.device_config)
            recipes = config.recipe.parent
            for name in self._clean_leftovers(recipes):
                self.say(f"removed {name}, left by a push that did not finish")
            sidecar = load_verified(config.model.onnx)
            recipe = self._verify(source, config, sidecar)
            name = source.resolve().name
            target = recipes / name
            self.say(f"  recipe {name} (id {recipe.recipe_id}) for model {sidecar.sha256[:12]}…, "
                     f"{self._signature(config)}")
            if target.exists() and self._same(source, target):
                self.say(f"  {target} already holds this recipe: nothing to copy")
            else:
                if target.exists():
                    raise ConfigError(f"{target}: a recipe named {name} with other content is on the cell; a pushed "
                                      "recipe never replaces one: push it under another folder name")
                self._copy_and_check(source, target, config, sidecar)
            if self.options.activate:
                self._activate(recipes, name, config.recipe.name)
            else:
                self.say(f"recipe {name} is in {recipes}; switch to it with `okcell recipe push --activate` or OPC UA "
                         f"ActivateRecipe({name!r})")
            return name

    def _verify(self, source: Path, config: CellConfig, sidecar: ModelSidecar) -> Recipe:
        """The recipe as the cell would load it, signed by every configured key, with golden images."""
        if not (source / MANIFEST_FILE).is_file():
            raise ConfigError(f"{source}: not a recipe folder (no {MANIFEST_FILE}; make one with `okcell calibrate`)")
        recipe = Recipe.load(source, sidecar, public_key=config.recipe_public_key)
        key = self.options.key
        if key is not None and key != config.recipe_public_key:
            verify_file(source / MANIFEST_FILE, load_public_key(key))
        if load_recipe_golden(source) is None:
            raise ConfigError(f"{source}: carries no golden images ({GOLDEN_FILE}), so it cannot be self-tested on "
                              "the cell; add them on the calibration machine with `okcell recipe golden`")
        return recipe

    def _signature(self, config: CellConfig) -> str:
        keys = {k for k in (config.recipe_public_key, self.options.key) if k is not None}
        if keys:
            return "signature verified with " + ", ".join(str(k) for k in sorted(keys))
        return "signature not checked (no public key configured)"

    def _copy_and_check(self, source: Path, target: Path, config: CellConfig, sidecar: ModelSidecar) -> None:
        """copy, selftest and publish steps; nothing is left behind unless the recipe is published whole."""
        staging = staging_directory(target)
        self.step("copy", str(staging))
        try:
            copy_tree_durably(source, staging)
            chown_like(staging, target.parent)
            self.step("selftest", f"golden images of {source.name} with model {config.model.onnx} "
                                  f"(backend {config.model.backend})")
            self._selftest(staging, target.name, config, sidecar)
            self.step("publish", str(target))
            publish(staging, target, force=False)
        except BaseException:
            remove_tree(staging)
            raise

    def _selftest(self, recipe_dir: Path, name: str, config: CellConfig, sidecar: ModelSidecar) -> None:
        model = config.model
        recipe = Recipe.load(recipe_dir, sidecar, threads=model.threads or -1, public_key=config.recipe_public_key)
        extractor = open_extractor(model.onnx, backend=model.backend, engine_path=model.engine, threads=model.threads)
        try:
            outcomes = check_recipe(Inspector(extractor, recipe, heatmap=False), recipe_dir) or []
        except SelftestFailed as exc:
            raise InstallError(f"recipe {name}: {exc.failure}") from None
        finally:
            extractor.close()
        for outcome in outcomes:
            self.say(f"  {outcome.image.file}: {outcome.decision} {outcome.score:.4f} "
                     f"(expected {outcome.image.decision} {outcome.image.score:.4f})")

    def _activate(self, recipes: Path, name: str, configured: str) -> None:
        """switch, reload and confirm steps; back to the old ``.active`` if the cell does not take ``name``."""
        old = active_name(recipes)
        if old == name:
            current = read_loaded(recipes)
            if current is not None and current.accepted and current.recipe == name:
                self.say(f"recipe {name} is already the cell's active recipe ({recipes / ACTIVE_LINK})")
                return
            # a push killed after its switch: the cell never confirmed it, so back means what the cell last loaded
            old = None if current is None or current.recipe == configured else current.recipe
        self.step("switch", f"{recipes / ACTIVE_LINK} -> {name} (was {old or 'none: recipe: of cell.yaml'})")
        point_active(recipes, name)
        reason = self._reload(recipes, name)
        if reason is None:
            self.say(f"recipe {name} is the cell's active recipe")
            return
        self.step("rollback", f"{recipes / ACTIVE_LINK} -> {old or 'none'}: {reason}")
        point_active(recipes, old)
        back = old or "the recipe of cell.yaml"
        again = self._reload(recipes, None) if self.options.reloader.running(self._pid(recipes)) else None
        raise InstallError(f"the cell did not switch to recipe {name}: {reason}; {ACTIVE_LINK} switched back to {back}"
                           + (f", which the cell did not reload either: {again}" if again else ""))

    def _reload(self, recipes: Path, name: str | None) -> str | None:
        """Ask the cell to reload; None once it reports ``name`` (None: any recipe) loaded, else why not."""
        before = read_loaded(recipes)
        pid = before.pid if before else None
        self.step("reload", f"{self.options.reloader.name}" + (f" (process {pid})" if pid else ""))
        try:
            self.options.reloader.reload(pid)
        except (InstallError, OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        self.step("confirm", f"waiting up to {self.options.timeout_s:g} s for the cell to report "
                             f"{name or 'its recipe'} loaded ({recipes / LOADED_FILE})")
        deadline = time.monotonic() + self.options.timeout_s
        while True:
            loaded = read_loaded(recipes)
            if loaded is not None and loaded != before:
                if not loaded.accepted:
                    return f"the cell refused it: {loaded.error}"
                if name is not None and loaded.recipe != name:
                    return f"the cell loaded recipe {loaded.recipe} instead"
                return None
            if not self.options.reloader.running(pid):
                return f"the cell ({self.options.reloader.name}, process {pid}) stopped before it reported a load"
            if time.monotonic() > deadline:
                return f"the cell did not report loading it within {self.options.timeout_s:g} s"
            time.sleep(_POLL_S)

    @staticmethod
    def _pid(recipes: Path) -> int | None:
        loaded = read_loaded(recipes)
        return loaded.pid if loaded else None

    @staticmethod
    def _same(source: Path, target: Path) -> bool:
        """Same files with the same content (names and sha256)."""
        def files(folder: Path) -> dict[str, str]:
            return {p.relative_to(folder).as_posix(): sha256_file(p) for p in folder.rglob("*") if p.is_file()}
        return files(source) == files(target)

    @staticmethod
    def _clean_leftovers(recipes: Path) -> list[str]:
        """Partial copies and temporary links of killed pushes (dot names: never a recipe the cell lists)."""
        removed = []
        for path in sorted(recipes.iterdir()):
            if path.name.startswith(".") and (".partial-" in path.name or path.name.startswith(".link-")):
                remove_tree(path)
                removed.append(path.name)
        return removed
