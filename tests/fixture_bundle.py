"""Session fixture ``staged``: a release assembled once (model, demo recipe, golden images, cell.yaml) for the
bundle tests to pack variants of (tests/bundle_support.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml


@dataclass(frozen=True)
class Staged:
    """A release assembled by ``stage_release`` (never packed itself) and its draft manifest."""

    folder: Path
    draft: dict[str, Any]


@pytest.fixture(scope="session")
def staged(exported_model: Path, demo_recipe: Path, demo_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Staged:
    """The demo recipe with two held-out OK and two NOK golden images; its cell.yaml replays the held-out OK parts."""
    from edge.deploy.create import BundleSpec, stage_release

    scratch = tmp_path_factory.mktemp("staged")
    template = scratch / "template.yaml"
    template.write_text(yaml.safe_dump({"model": {"backend": "auto", "threads": 2},
                                        "replay": {"images": str(demo_images / "holdout" / "ok")},
                                        "trigger": {"mode": "software"}}))
    holdout = demo_images / "holdout"
    spec = BundleSpec(model=exported_model, recipes=[demo_recipe], golden=[(None, holdout / "ok"), (None, holdout / "nok")],
                      name="line1", version="1", config=template, golden_count=2)
    folder = scratch / "release"
    folder.mkdir()
    return Staged(folder, stage_release(spec, folder))
