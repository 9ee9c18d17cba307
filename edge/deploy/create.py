"""``okcell bundle create``: model + recipes + cell.yaml + golden images -> one signed, versioned bundle.

The release is assembled in a staging folder (:func:`stage_release`), then :func:`pack` hashes every file into the
manifest, signs it and writes the archive. Every recipe is loaded with the model before anything is written, and
the golden images are inspected with the real model and recipe (ONNX Runtime) to record what the cell must
reproduce.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import yaml

from edge.backends.onnxruntime_backend import OnnxRuntimeExtractor
from edge.deploy.bundle import (BUNDLE_FORMAT, ENGINE_FILE, MANIFEST_FILE, MODEL_FILE, MODEL_SIDECAR, RECIPE_KEY_FILE,
                                RECIPES_DIR, SELFTEST_DIR, SUFFIX, FileEntry, ReleaseManifest, compute_release_id,
                                parse_version, write_bundle)
from edge.deploy.selftest import pick_golden
from edge.runtime.cell_config import RELEASE_CONFIG
from edge.runtime.inspector import Inspector
from export.engine_sidecar import PRECISIONS
from okcell import __version__
from okcell.recipe import Recipe
from okcell.schema import ConfigError, read_yaml, sha256_file
from okcell.sidecar import load_verified, sidecar_path_for
from okcell.signing import load_private_key, sign_file

TEMPLATE_MODEL_KEYS = ("onnx", "engine", "backend", "threads")  # onnx and engine are set by the bundle


@dataclass
class BundleSpec:
    """What goes into a bundle (the CLI flags map one to one)."""

    model: Path
    recipes: list[Path]  # the first is the active recipe
    golden: list[tuple[str | None, Path]]  # (recipe name or None for the active one, folder of candidate images)
    name: str
    version: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))
    config: Path | None = None  # cell.yaml template: every key but model and recipe is kept
    golden_count: int = 3
    tolerance: float = 0.01
    precision: str = "fp16"
    requires_okcell: str = __version__
    sign_key: Path | None = None


def create_bundle(spec: BundleSpec, out: Path) -> ReleaseManifest:
    """Write the bundle ``out`` (``.tar``); returns its manifest."""
    check_out(out)
    with tempfile.TemporaryDirectory(prefix=".okcell-bundle-", dir=out.parent) as scratch:
        staging = Path(scratch)
        draft = stage_release(spec, staging)
        return pack(staging, draft, out, spec.sign_key)


def check_out(out: Path) -> None:
    if out.suffix != SUFFIX:
        raise ConfigError(f"{out}: a bundle file name ends with {SUFFIX}")
    if not out.parent.is_dir():
        raise ConfigError(f"{out}: folder {out.parent} does not exist")
    if out.exists():
        raise ConfigError(f"{out}: exists; refusing to overwrite a bundle (choose another name or remove it)")


def stage_release(spec: BundleSpec, staging: Path) -> dict[str, Any]:
    """Copy model, recipes, keys and golden images into ``staging`` and write its cell.yaml; returns the draft
    manifest (everything but ``files`` and ``release_id``)."""
    _check_spec(spec)
    sidecar = load_verified(spec.model)
    template = _template(spec.config)
    recipe_key = _template_path(template, "recipe_public_key", spec.config)
    names = [folder.name for folder in spec.recipes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--recipe: two recipe folders are named {', '.join(duplicates)}; recipes are named by folder")
    recipes = {name: Recipe.load(folder, sidecar, public_key=recipe_key) for name, folder in zip(names, spec.recipes)}
    _copy(spec.model, staging / MODEL_FILE)
    _copy(sidecar_path_for(spec.model), staging / MODEL_SIDECAR)
    for name, folder in zip(names, spec.recipes):
        _copy_tree(folder, staging / RECIPES_DIR / name)
    if recipe_key is not None:
        _copy(recipe_key, staging / RECIPE_KEY_FILE)
    (staging / RELEASE_CONFIG).write_text(yaml.safe_dump(_release_config(template, names[0], recipe_key is not None),
                                                         sort_keys=False))
    golden: list[dict[str, Any]] = []
    extractor = OnnxRuntimeExtractor(spec.model)
    try:
        for recipe_name, folder in spec.golden:
            name = recipe_name or names[0]
            if name not in recipes:
                raise ConfigError(f"--golden {name}={folder}: no recipe named {name!r} (recipes: {', '.join(names)})")
            inspector = Inspector(extractor, recipes[name], heatmap=False)
            for path, result in pick_golden(inspector, folder, spec.golden_count, spec.tolerance):
                file = f"{SELFTEST_DIR}/{name}/{len(golden):03d}-{path.name}"
                _copy(path, staging / file)
                golden.append({"file": file, "recipe": name, "source": str(path), "decision": result.decision,
                               "score": result.score})
    finally:
        extractor.close()
    return {
        "format_version": BUNDLE_FORMAT, "name": spec.name, "version": spec.version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "okcell_version": __version__, "requires_okcell": spec.requires_okcell,
        "recipes": {name: f"{RECIPES_DIR}/{name}" for name in names}, "active_recipe": names[0],
        "engine_precision": spec.precision, "tolerance": spec.tolerance, "golden": golden,
    }


def pack(staging: Path, draft: dict[str, Any], out: Path, sign_key: Path | None) -> ReleaseManifest:
    """Hash every file of ``staging`` into the manifest, write and (with ``sign_key``) sign it, write ``out``."""
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name not in (MANIFEST_FILE, MANIFEST_FILE + ".sig"))
    data = {**draft, "files": {p.relative_to(staging).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
                               for p in files}}
    data["release_id"] = compute_release_id(data)
    manifest_path = staging / MANIFEST_FILE
    manifest_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if sign_key is not None:
        sign_file(manifest_path, load_private_key(sign_key))
    manifest = ReleaseManifest.from_json(data, str(manifest_path))
    write_bundle(staging, manifest, out)
    return manifest


def _check_spec(spec: BundleSpec) -> None:
    if not spec.recipes:
        raise ConfigError("--recipe: give at least one recipe folder (the first is the active recipe)")
    if not spec.golden:
        raise ConfigError("--golden: give at least one folder of golden images (held-out OK parts, known NOK parts)")
    if spec.golden_count < 1:
        raise ConfigError(f"--golden-count must be >= 1, found {spec.golden_count}")
    if not spec.tolerance >= 0:
        raise ConfigError(f"--tolerance must be >= 0, found {spec.tolerance}")
    if spec.precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, found {spec.precision!r}")
    if parse_version(spec.requires_okcell, "--requires-okcell") < parse_version(__version__, "okcell"):
        raise ConfigError(f"--requires-okcell {spec.requires_okcell}: older than the okcell {__version__} making the "
                          "bundle, whose recipes it may not read")
    if not spec.name or not spec.version or any(c in spec.name + spec.version for c in "/\n"):
        raise ConfigError(f"--name {spec.name!r} / --version {spec.version!r}: give a non-empty name and version "
                          "without '/'")


def _template(config: Path | None) -> dict[str, Any]:
    if config is None:
        return {}
    data = read_yaml(config, missing="cell.yaml template for the release not found")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{config}: top level must be a mapping, found {type(data).__name__}")
    if "release" in data:
        raise ConfigError(f"{config}: a release's cell.yaml cannot name a release ('release:'); give the cell's own "
                          "configuration")
    model = data.get("model", {})
    if not isinstance(model, Mapping) or set(model) - set(TEMPLATE_MODEL_KEYS):
        raise ConfigError(f"{config}: model must be a mapping with keys among {', '.join(TEMPLATE_MODEL_KEYS)}, "
                          f"found {model!r}")
    return dict(data)


def _template_path(template: dict[str, Any], key: str, config: Path | None) -> Path | None:
    value = template.get(key)
    if value is None or config is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{config}: {key} must be a path, found {value!r}")
    path = Path(value) if Path(value).is_absolute() else config.parent / value
    if not path.is_file():
        raise ConfigError(f"{config}: {key}: file {path} not found")
    return path


def _release_config(template: dict[str, Any], active: str, recipe_key: bool) -> dict[str, Any]:
    """The release's cell.yaml: the template with model, engine, recipe (and key) pointing into the release."""
    model = {k: v for k, v in dict(template.get("model", {})).items() if k in ("backend", "threads")}
    model["onnx"] = MODEL_FILE
    if model.get("backend", "auto") != "onnxruntime":
        model["engine"] = ENGINE_FILE
    data = {**template, "model": model, "recipe": f"{RECIPES_DIR}/{active}"}
    if recipe_key:
        data["recipe_public_key"] = RECIPE_KEY_FILE
    return data


def _copy(source: Path, target: Path) -> None:
    if source.is_symlink() or not source.is_file():
        raise ConfigError(f"{source}: not a plain file (bundles hold files, not links)")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _copy_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        _copy(path, target / path.relative_to(source))
