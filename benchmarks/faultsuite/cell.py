"""The cell under test: a small exported model, demo parts, two good recipes and a broken one (made with the
``okcell`` commands an operator would use, cached in the work folder), and its ``cell.yaml``."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge.opcua.security import hash_password
from faultsuite.injector import Rig
from okcell.recipe import BANK_FILE

ROOT = Path(__file__).resolve().parents[2]
USER = "plc"
GOOD = ("part-a", "part-b")
BROKEN = "part-a-tampered"
LINK = "line"


@dataclass(frozen=True)
class CellUnderTest:
    config: Path
    url: str
    password: str
    rig: Rig


def okcell(*args: str) -> None:
    """Run one ``okcell`` command (this checkout, this interpreter); its output goes to stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "edge.cli.main", *args], env=env, stdout=sys.stderr)
    if done.returncode != 0:
        raise SystemExit(f"faults: okcell {' '.join(args)} failed (exit status {done.returncode})")


def prepare_model(work: Path, size: int) -> Path:
    """The embedded DINOv2 ViT-S/14 exported at ``size`` px (once per work folder)."""
    model = work / "model" / f"dinov2_vits14_{size}.onnx"
    if not model.with_suffix(".json").is_file():
        okcell("export", "--size", str(size), "--out", str(model))
    return model


def prepare_recipes(work: Path, model: Path, threads: int) -> tuple[Path, Path]:
    """Demo parts (their hold-out set is the replay folder's content) and the recipes of ``model``:
    two good ones (different coresets, so different recipe ids) and a copy of the first with its bank altered."""
    demo = work / "demo"
    if not (demo / "holdout").is_dir():
        okcell("demo-data", "--out", str(demo), "--size", "256", "--train-ok", "30", "--calib-nok", "2",
               "--holdout-ok", "8", "--holdout-nok", "2")
    recipes = work / f"recipes-{model.stem}"
    recipes.mkdir(exist_ok=True)
    for name, ratio in zip(GOOD, ("0.1", "0.2")):
        if not (recipes / name / "manifest.json").is_file():
            okcell("calibrate", "--model", str(model), "--ok", str(demo / "train" / "ok"), "--nok",
                   str(demo / "calib" / "nok"), "--coreset-ratio", ratio, "--threads", str(threads),
                   "--out", str(recipes / name), "--force")
    broken = recipes / BROKEN
    if not broken.is_dir():
        shutil.copytree(recipes / GOOD[0], broken)
        bank = broken / BANK_FILE
        content = bank.read_bytes()
        bank.write_bytes(content[:-16] + bytes(b ^ 0xFF for b in content[-16:]))
    return demo, recipes


def write_cell(work: Path, model: Path, demo: Path, recipes: Path, disk: Path, port: int, threads: int) -> CellUnderTest:
    """The replay folder (the hold-out parts, OK and NOK), the recipe link and ``cell.yaml`` (software triggers,
    archive on ``disk``, OPC UA with one user)."""
    images = work / "line-images"
    for stale in (images, images.with_name(images.name + ".away")):
        shutil.rmtree(stale, ignore_errors=True)
    images.mkdir()
    for path in sorted((demo / "holdout").rglob("*.png")):
        shutil.copy(path, images / f"{path.parent.name}_{path.name}")
    rig = Rig(images=images, disk=disk, archive=disk / "archive", recipes=recipes, link=LINK, good=GOOD, broken=BROKEN)
    rig.point_link(GOOD[0])
    rig.archive.mkdir()
    password = secrets.token_urlsafe(12)
    url = f"opc.tcp://127.0.0.1:{port}/okcell"
    data: dict[str, Any] = {
        "name": "fault-suite",
        "state_dir": str(work / "state"),
        "model": {"onnx": str(model), "backend": "onnxruntime", "threads": threads},
        "recipe": str(recipes / LINK),
        "replay": {"images": str(images)},
        "trigger": {"mode": "software", "timeout_s": 5.0},
        "archive": {"directory": str(rig.archive), "quota_mb": 8, "min_free_mb": 4, "ok_sample_every": 50},
        "opcua": {"endpoint": url, "security": ["None"],
                  "users": [{"name": USER, "password_hash": hash_password(password)}]},
    }
    config = work / "cell.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return CellUnderTest(config, url, password, rig)
