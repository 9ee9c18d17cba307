"""Procedural surface defects drawn onto OK images: scratches, stains, holes, contamination.

Each defect is drawn as a soft alpha map (anti-aliased by supersampling and blur) and blended into the
image, so edges look like a camera saw them. Sizes scale with the image's shorter side and stay small
(roughly 0.1–3 % of the area): visible to a person, not trivially huge. Works on uint8 RGB (H, W, 3) and
mono (H, W) frames; colours collapse to brightness on mono. Only numpy and OpenCV are needed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from okcell.images import IMAGE_SUFFIXES, ImageError, read_image
from okcell.progress import Progress
from okcell.schema import ConfigError

DEFECT_KINDS = ("scratch", "stain", "hole", "contamination")
MANIFEST_NAME = "synthesize.json"
MASK_ALPHA = 0.15  # alpha above which a pixel counts as defect in the written mask
SUPERSAMPLE = 4


@dataclass
class SyntheticDefect:
    """A defective copy of an OK image and where the defect is."""

    image: np.ndarray  # uint8, same shape as the input
    mask: np.ndarray  # uint8 (H, W), 255 inside the defect
    kind: str
    detail: str  # sub-type, e.g. "dark", "rust", "fibre"


def add_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator, foreign: np.ndarray | None = None
) -> SyntheticDefect:
    """Draw one defect of ``kind`` onto a copy of ``image``.

    ``foreign``: optional uint8 image another material is cut from for pasted contamination; without it a
    procedural texture is used."""
    if kind not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; expected one of {', '.join(DEFECT_KINDS)}")
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be uint8 (H, W) or (H, W, 3), found {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 32:
        raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} px is too small for a defect (min 32 px)")
    work = image.astype(np.float32)
    if work.ndim == 2:
        work = work[:, :, None]
    drawer: Callable[[np.ndarray, np.random.Generator, np.ndarray | None], tuple[np.ndarray, np.ndarray, str]]
    drawer = _DRAWERS[kind]
    for _ in range(8):  # retry the rare draw that changes (almost) nothing, e.g. a dark hole on a dark area
        out, alpha, detail = drawer(work, rng, foreign)
        mask = np.where(alpha > MASK_ALPHA, 255, 0).astype(np.uint8)
        changed = np.abs(out - work).max(axis=2)[mask > 0]
        if changed.size and np.percentile(changed, 75) >= 12.0:
            break
    result = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        result = result[:, :, 0]
    return SyntheticDefect(image=result, mask=mask, kind=kind, detail=detail)


def _scale(image: np.ndarray) -> float:
    """Defect sizes are given for a 256 px part and scale with the shorter side."""
    return min(image.shape[:2]) / 256.0


def _colour(image: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
    """A colour as this image's channel vector (brightness on mono)."""
    value = np.asarray(rgb, dtype=np.float32)
    return value if image.shape[2] == 3 else np.array([value.mean()], dtype=np.float32)


def _draw_alpha(shape: tuple[int, int], draw: Callable[[np.ndarray, int], None], blur_px: float = 0.6) -> np.ndarray:
    """Render with ``draw(canvas, factor)`` on a supersampled uint8 canvas -> float alpha (H, W) in [0, 1]."""
    height, width = shape
    canvas = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE), np.uint8)
    draw(canvas, SUPERSAMPLE)
    alpha = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    if blur_px > 0:
        return np.asarray(cv2.GaussianBlur(alpha, (0, 0), blur_px), dtype=np.float32)
    return alpha


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cell_px: float) -> np.ndarray:
    """Low-frequency noise in [0, 1] with features about ``cell_px`` wide."""
    height, width = shape
    small = rng.random((max(2, int(height / cell_px) + 2), max(2, int(width / cell_px) + 2))).astype(np.float32)
    field = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    low, high = float(field.min()), float(field.max())
    return (field - low) / max(high - low, 1e-6)


def _curve(rng: np.random.Generator, shape: tuple[int, int], length: float, bend: float, wiggles: int) -> np.ndarray:
    """Points (K, 2) of a gently curved path of about ``length`` px, x/y order, inside the image."""
    height, width = shape
    margin = 0.08 * min(shape)
    start = np.array([rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)])
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(0.0, 1.0, 160)[:, None]
    offset = bend * length * 4 * t * (1 - t) * rng.choice([-1, 1])
    for _ in range(wiggles):
        offset = offset + rng.uniform(0.01, 0.04) * length * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6))
    points = start + t * length * direction + offset * normal
    # keep the path inside the frame by shifting it back in
    low = points.min(axis=0)
    high = points.max(axis=0)
    shift = np.maximum(margin - low, 0) - np.maximum(high - (np.array([width, height]) - margin), 0)
    return points + shift


def _polyline(points: np.ndarray, width_px: float) -> Callable[[np.ndarray, int], None]:
    def draw(canvas: np.ndarray, factor: int) -> None:
        scaled = np.round(points * factor * 16).astype(np.int32).reshape(-1, 1, 2)
        thickness = max(1, int(round(width_px * factor)))
        cv2.polylines(canvas, [scaled], False, 255, thickness, cv2.LINE_AA, shift=4)

    return draw


def _blob(centre: np.ndarray, radius: float, rng: np.random.Generator, roughness: float) -> np.ndarray:
    """Polygon (K, 2) of an irregular round blob."""
    angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    radial = np.ones_like(angles)
    for harmonic in range(2, 6):
        radial += roughness / harmonic * rng.uniform(-1, 1) * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
    return centre + radius * radial[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _fill(polygons: list[np.ndarray]) -> Callable[[np.ndarray, int], None]:
    def draw(canvas: np.ndarray, factor: int) -> None:
        scaled = [np.round(p * factor * 16).astype(np.int32).reshape(-1, 1, 2) for p in polygons]
        cv2.fillPoly(canvas, scaled, 255, cv2.LINE_AA, shift=4)

    return draw


def _scratch(image: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, str]:
    shape = image.shape[:2]
    scale = _scale(image)
    length = rng.uniform(0.25, 0.45) * min(shape)
    points = _curve(rng, shape, length, bend=rng.uniform(0.0, 0.12), wiggles=0)
    width = rng.uniform(1.2, 2.4) * scale
    alpha = _draw_alpha(shape, _polyline(points, width), blur_px=0.5 * scale)
    # real scratches fade in and out along their length
    alpha *= 0.55 + 0.45 * _smooth_noise(shape, rng, cell_px=24 * scale)
    strength = rng.uniform(0.55, 0.8)
    a = (strength * alpha)[:, :, None]
    if rng.random() < 0.5:
        # a groove: dark core, a faint lit edge on one side
        edge = np.roll(alpha, shift=(1, 1), axis=(0, 1))[:, :, None] * (1 - alpha[:, :, None])
        out = image * (1 - a) + (255 - image) * 0.35 * strength * edge
        return out, alpha, "dark"
    out = image + (255 - image) * a
    return out, alpha, "bright"


_STAINS = {  # name -> (RGB gain of the stained surface, brightness factor range)
    "oil": ((0.95, 0.9, 0.8), (0.45, 0.65)),
    "rust": ((1.25, 0.8, 0.5), (0.65, 0.85)),
    "water": ((0.97, 1.0, 1.05), (0.55, 0.7)),
    "residue": ((1.05, 1.05, 1.0), (1.35, 1.6)),
}


def _stain(image: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, str]:
    shape = image.shape[:2]
    height, width = shape
    radius = rng.uniform(0.055, 0.09) * min(shape)
    centre = np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)])
    alpha = _draw_alpha(shape, _fill([_blob(centre, radius, rng, roughness=0.5)]), blur_px=0.22 * radius)
    alpha *= 0.7 + 0.3 * _smooth_noise(shape, rng, cell_px=radius / 2)
    name = str(rng.choice(list(_STAINS)))
    gain, brightness = _STAINS[name]
    stained = image * _colour(image, gain) * rng.uniform(*brightness)
    if name == "water":  # dried water leaves a darker ring at its edge
        ring = np.clip(alpha * (1 - alpha) * 4, 0, 1)
        stained = stained * (1 - 0.3 * ring[:, :, None])
    a = (rng.uniform(0.75, 0.95) * alpha)[:, :, None]
    return image * (1 - a) + stained * a, alpha, name


def _hole(image: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, str]:
    shape = image.shape[:2]
    height, width = shape
    major = rng.uniform(0.03, 0.06) * min(shape)
    minor = major * rng.uniform(0.6, 1.0)
    angle = rng.uniform(0, 180)
    centre = np.array([rng.uniform(2 * major, width - 2 * major), rng.uniform(2 * major, height - 2 * major)])

    def draw(canvas: np.ndarray, factor: int) -> None:
        c = tuple(int(v) for v in np.round(centre * factor * 16))
        axes = tuple(int(v) for v in np.round(np.array([major, minor]) * factor * 16))
        cv2.ellipse(canvas, c, axes, angle, 0, 360, 255, -1, cv2.LINE_AA, shift=4)

    alpha = _draw_alpha(shape, draw, blur_px=0.6 * _scale(image))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    along = ((xs - centre[0]) * np.cos(light) + (ys - centre[1]) * np.sin(light)) / major
    # inside: dark, the wall facing the light a little brighter; a thin lit rim on the far edge
    depth = rng.uniform(10, 35)
    interior = depth * (1.0 + 0.9 * np.clip(along, -1, 1))[:, :, None] * np.ones(image.shape[2], np.float32)
    rim = np.clip(cv2.dilate(alpha, np.ones((3, 3), np.uint8)) - alpha, 0, 1) * np.clip(along, 0, 1)
    out = image * (1 - alpha[:, :, None]) + interior * alpha[:, :, None]
    out = out + (255 - out) * 0.5 * rim[:, :, None]
    return out, np.maximum(alpha, rim), "hole"


def _procedural_material(shape: tuple[int, int], rng: np.random.Generator, channels: int) -> np.ndarray:
    """A fibrous/grainy foreign material (float, channels last) when no foreign image is given."""
    grain = np.zeros(shape, np.float32)
    for octave, cell in enumerate((12.0, 5.0, 2.0)):
        grain += _smooth_noise(shape, rng, cell_px=cell) / (octave + 1)
    grain /= grain.max()
    colour = rng.uniform(40, 220, size=3).astype(np.float32)
    if channels == 1:
        colour = colour[:1]
    return (0.5 + 0.7 * grain)[:, :, None] * colour


def _contamination(
    image: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, str]:
    shape = image.shape[:2]
    height, width = shape
    scale = _scale(image)
    detail = str(rng.choice(["particles", "fibre", "foreign"]))
    if detail == "particles":
        cluster = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
        spread = rng.uniform(0.03, 0.07) * min(shape)
        blobs = [
            _blob(cluster + rng.normal(0, spread, 2), rng.uniform(1.5, 3.5) * scale, rng, roughness=0.6)
            for _ in range(int(rng.integers(4, 10)))
        ]
        alpha = _draw_alpha(shape, _fill(blobs), blur_px=0.5 * scale)
        base = rng.uniform(10, 40) if rng.random() < 0.5 else rng.uniform(215, 245)
        shade = np.clip(base + rng.normal(0, 10, size=3), 0, 255)
        colour = _colour(image, (float(shade[0]), float(shade[1]), float(shade[2])))
        material = np.broadcast_to(colour, image.shape).astype(np.float32)
    elif detail == "fibre":
        points = _curve(rng, shape, rng.uniform(0.3, 0.5) * min(shape), bend=rng.uniform(0.1, 0.3), wiggles=3)
        alpha = _draw_alpha(shape, _polyline(points, rng.uniform(1.0, 1.8) * scale), blur_px=0.5 * scale)
        palette = [(25, 20, 18), (240, 238, 230), (40, 60, 160), (150, 30, 30)]
        colour = _colour(image, palette[int(rng.integers(len(palette)))])
        material = np.broadcast_to(colour, image.shape).astype(np.float32)
    else:
        radius = rng.uniform(0.05, 0.08) * min(shape)
        centre = np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)])
        alpha = _draw_alpha(shape, _fill([_blob(centre, radius, rng, roughness=0.8)]), blur_px=0.8 * scale)
        material = _foreign_material(shape, rng, image.shape[2], foreign)
    a = (rng.uniform(0.85, 1.0) * alpha)[:, :, None]
    return image * (1 - a) + material * a, alpha, detail


def _foreign_material(
    shape: tuple[int, int], rng: np.random.Generator, channels: int, foreign: np.ndarray | None
) -> np.ndarray:
    if foreign is None or min(foreign.shape[:2]) < min(shape) // 2:
        return _procedural_material(shape, rng, channels)
    height, width = shape
    source = foreign.astype(np.float32)
    if source.ndim == 2:
        source = source[:, :, None]
    if source.shape[2] != channels:
        source = source.mean(axis=2, keepdims=True) if channels == 1 else np.repeat(source[:, :, :1], 3, axis=2)
    source = np.asarray(cv2.resize(source, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.float32)
    if source.ndim == 2:
        source = source[:, :, None]
    return source


_DRAWERS = {"scratch": _scratch, "stain": _stain, "hole": _hole, "contamination": _contamination}


def parse_kinds(text: str) -> list[str]:
    """``"scratch,hole"`` -> ``["scratch", "hole"]``; ConfigError for an unknown kind."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in DEFECT_KINDS]
    if unknown or not kinds:
        raise ConfigError(f"--kinds: unknown or no defect kind(s) {', '.join(unknown) or text!r}; "
                          f"expected a comma-separated subset of {','.join(DEFECT_KINDS)}")
    return list(dict.fromkeys(kinds))


def prepare_output_folder(out_dir: Path, manifest_name: str, owned: Sequence[str]) -> None:
    """Make ``out_dir`` ready for generated data without ever deleting user files: refuse a non-empty
    folder unless it holds ``manifest_name`` from an earlier run, whose ``owned`` sub-folders are cleared."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / manifest_name).is_file():
            raise ConfigError(
                f"{out_dir}: folder is not empty and holds no {manifest_name} from an earlier run; "
                "refusing to write into it (choose an empty or new folder)"
            )
        for name in owned:
            shutil.rmtree(out_dir / name, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB or mono uint8 image as PNG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"{path}: could not write image")


def synthesize_folder(
    source: Path,
    out_dir: Path,
    kinds: Sequence[str],
    count: int,
    seed: int = 0,
) -> dict:
    """Write ``count`` defective copies per kind of the OK images under ``source`` to
    ``out_dir/nok/<kind>/`` with masks in ``out_dir/masks/<kind>/``, with progress on stderr; returns the manifest."""
    source, out_dir = Path(source), Path(out_dir)
    if count < 1:
        raise ConfigError(f"--count must be at least 1, found {count}")
    if not source.is_dir():
        raise ConfigError(f"{source}: not a folder of OK images")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    images = []
    for path in files:  # read everything first: a bad file stops us before anything is written
        try:
            images.append(read_image(path, min_size=(32, 32)))
        except ImageError as exc:
            raise ConfigError(str(exc)) from None
    prepare_output_folder(out_dir, MANIFEST_NAME, ("nok", "masks"))
    total = len(kinds) * count
    with Progress("synthesize", total, "images") as progress:
        for kind, index in ((k, i) for k in kinds for i in range(count)):
            rng = np.random.default_rng([seed, DEFECT_KINDS.index(kind), index])
            which = int(rng.integers(len(images)))
            other = images[int(rng.integers(len(images)))]
            defect = add_defect(images[which], kind, rng, foreign=None if other is images[which] else _shuffled(other, rng))
            name = f"{files[which].stem}_{kind}_{index:03d}.png"
            write_png(out_dir / "nok" / kind / name, defect.image)
            write_png(out_dir / "masks" / kind / name, defect.mask)
            progress.advance()
    manifest = {"generator": "okcell synthesize", "source": str(source), "sources": len(files),
                "kinds": list(kinds), "count_per_kind": count, "seed": seed, "images": total}
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _shuffled(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another OK image scrambled into tiles: same material statistics, foreign structure."""
    height, width = image.shape[:2]
    tile = max(8, min(height, width) // 8)
    rows, cols = height // tile, width // tile
    tiles = [image[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] for r in range(rows) for c in range(cols)]
    order = rng.permutation(len(tiles))
    grid = [np.concatenate([np.rot90(tiles[order[r * cols + c]], int(rng.integers(4))) for c in range(cols)], axis=1)
            for r in range(rows)]
    return np.ascontiguousarray(np.concatenate(grid, axis=0))
