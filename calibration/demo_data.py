"""Demo parts from the texture photographs scikit-image ships (no downloads): one texture = one part type.

OK parts are crops of the photo as a production line would see them: a slightly different position and
rotation each time, mirror images, small brightness/contrast/focus changes and sensor noise. NOK parts are
fresh OK parts with one procedural defect from :mod:`calibration.synthetic`.

Layout written under the output folder::

    train/ok/                 reference OK parts (calibration input)
    calib/nok/<defect>/       labelled NOK parts (optional calibration input)
    holdout/ok/               unseen OK parts
    holdout/nok/<defect>/     unseen NOK parts
    masks/<split>/<defect>/   defect masks (255 = defect) with the same file names
    preview.png               a few NOK parts per defect with the defect outlined
    demo-data.json            what was generated (part, seed, sizes, counts)

Hold-out parts are cut from the same photograph as the references (new positions, rotations and noise), so
this set is easier than a real line, where every part is a new physical object.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from calibration.synthetic import DEFECT_KINDS, add_defect, prepare_output_folder, write_png
from okcell.progress import Progress
from okcell.schema import ConfigError

# part type -> (RGB tint of the grey photo, texture pasted as foreign contamination)
PART_TYPES: dict[str, tuple[tuple[float, float, float], str]] = {
    "brick": ((1.1, 0.85, 0.7), "gravel"),
    "gravel": ((1.0, 0.97, 0.9), "grass"),
    "grass": ((0.75, 1.05, 0.65), "gravel"),
}
MANIFEST_NAME = "demo-data.json"
OWNED_FOLDERS = ("train", "calib", "holdout", "masks")
SPLIT_SEEDS = {"train": 1, "calib": 2, "holdout_ok": 3, "holdout_nok": 4}


@dataclass(frozen=True)
class DemoCounts:
    """How many images of each kind to make."""

    train_ok: int = 60
    calib_nok_per_defect: int = 3
    holdout_ok: int = 24
    holdout_nok_per_defect: int = 5


def texture(name: str) -> np.ndarray:
    """The grey scikit-image photograph ``name`` tinted to an RGB uint8 part surface."""
    if name not in PART_TYPES:
        raise ConfigError(f"unknown part type {name!r}; expected one of {', '.join(PART_TYPES)}")
    from skimage import data  # demo extra; imported here so the runtime does not need it

    grey = getattr(data, name)().astype(np.float32)
    tint = np.asarray(PART_TYPES[name][0], dtype=np.float32)
    return np.clip(grey[:, :, None] * tint + 0.5, 0, 255).astype(np.uint8)


def make_part(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One OK part: a ``size`` x ``size`` view of ``photo`` with line-like variation."""
    height, width = photo.shape[:2]
    half = size / 2 * 1.05
    if min(height, width) < 2 * half:
        raise ConfigError(f"part size {size} px does not fit the {width}x{height} px texture photo")
    cx, cy = rng.uniform(half, width - half), rng.uniform(half, height - half)
    angle = rng.uniform(-3.0, 3.0)
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    matrix[:, 2] += np.array([size / 2 - cx, size / 2 - cy])
    part = cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        part = part[:, ::-1]
    sigma = rng.uniform(0.0, 0.6)  # focus
    work = cv2.GaussianBlur(part, (0, 0), sigma).astype(np.float32) if sigma > 0.1 else part.astype(np.float32)
    mean = work.mean()
    work = (work - mean) * rng.uniform(0.95, 1.05) + mean * rng.uniform(0.93, 1.07)  # contrast, brightness
    work += rng.normal(0.0, 1.5, work.shape)  # sensor noise
    return np.clip(work + 0.5, 0, 255).astype(np.uint8)


def write_demo_set(
    out_dir: Path,
    part: str = "brick",
    size: int = 256,
    counts: DemoCounts = DemoCounts(),
    seed: int = 0,
) -> dict:
    """Write the demo set (see module doc) and return its manifest, with progress on stderr. Same arguments -> same
    pixels."""
    out_dir = Path(out_dir)
    if size < 64:
        raise ConfigError(f"part size must be at least 64 px, found {size}")
    photo = texture(part)
    foreign = texture(PART_TYPES[part][1])
    prepare_output_folder(out_dir, MANIFEST_NAME, OWNED_FOLDERS)
    jobs: list[tuple[str, str | None, int]] = [("train", None, i) for i in range(counts.train_ok)]
    jobs += [("calib", kind, i) for kind in DEFECT_KINDS for i in range(counts.calib_nok_per_defect)]
    jobs += [("holdout", None, i) for i in range(counts.holdout_ok)]
    jobs += [("holdout", kind, i) for kind in DEFECT_KINDS for i in range(counts.holdout_nok_per_defect)]
    examples: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {kind: [] for kind in DEFECT_KINDS}
    defect_area: list[float] = []
    with Progress("demo-data", len(jobs), "images") as progress:
        for split, kind, index in jobs:
            stream = SPLIT_SEEDS[split if split != "holdout" else ("holdout_ok" if kind is None else "holdout_nok")]
            kind_index = DEFECT_KINDS.index(kind) if kind else 0
            rng = np.random.default_rng([seed, stream, kind_index, index])
            image = make_part(photo, size, rng)
            if kind is None:
                write_png(out_dir / split / "ok" / f"ok_{index:03d}.png", image)
            else:
                defect = add_defect(image, kind, rng, foreign)
                name = f"{kind}_{index:03d}.png"
                write_png(out_dir / split / "nok" / kind / name, defect.image)
                write_png(out_dir / "masks" / split / kind / name, defect.mask)
                defect_area.append(float((defect.mask > 0).mean()))
                if len(examples[kind]) < 4:
                    examples[kind].append((defect.image, defect.mask))
            progress.advance()
    write_png(out_dir / "preview.png", _preview(examples))
    manifest = {
        "generator": "okcell demo-data",
        "part": part,
        "foreign_texture": PART_TYPES[part][1],
        "size": size,
        "seed": seed,
        "counts": asdict(counts),
        "defects": list(DEFECT_KINDS),
        "defect_area_percent": {
            "min": round(100 * min(defect_area), 3) if defect_area else None,
            "median": round(100 * float(np.median(defect_area)), 3) if defect_area else None,
            "max": round(100 * max(defect_area), 3) if defect_area else None,
        },
        "note": "hold-out parts are new crops of the same photograph as the references",
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _preview(examples: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> np.ndarray:
    """Rows of NOK examples per defect with the mask outline in green (RGB)."""
    rows = []
    for kind, items in examples.items():
        if not items:
            continue
        tiles = []
        for image, mask in items:
            tile = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
            contours, _ = cv2.findContours(cv2.dilate(mask, np.ones((5, 5), np.uint8)), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(tile, contours, -1, (0, 255, 0), 1, cv2.LINE_AA)
            tiles.append(tile)
        row = np.concatenate(tiles, axis=1)
        cv2.putText(row, kind, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
        rows.append(row)
    width = max(r.shape[1] for r in rows) if rows else 1
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0) if rows else np.zeros((1, 1, 3), np.uint8)
