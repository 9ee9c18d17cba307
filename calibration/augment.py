"""Reference augmentation: rotated and mirrored copies of each OK reference go into the bank too (for parts that
come at varying pose and for textures that look alike in every direction), as AnomalyDINO does for few references.

Copies of a reference stay in its fold (held-out scores never meet a copy of the image being scored) and are not
scored themselves: the threshold comes from the real references only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from okcell.schema import ConfigError

AUGMENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rot90": lambda image: np.rot90(image, 1),  # counter-clockwise
    "rot180": lambda image: np.rot90(image, 2),
    "rot270": lambda image: np.rot90(image, 3),
    "flipx": lambda image: image[:, ::-1],  # mirrored left-right
    "flipy": lambda image: image[::-1],  # mirrored top-bottom
}
SWAPS_SIDES = ("rot90", "rot270")


def parse_augment(text: str) -> tuple[str, ...]:
    """``"rot90,flipx"`` -> ("rot90", "flipx"); ``""`` or ``"none"`` -> (); ConfigError naming an unknown one."""
    if text.strip() in ("", "none"):
        return ()
    names = tuple(part.strip() for part in text.split(","))
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"--augment {text!r}: expected distinct names from {', '.join(AUGMENTATIONS)} (comma-separated) or none")
    return names


def augmented(image: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
    """The copies of ``image`` named by ``names``, in that order (contiguous arrays)."""
    return [np.ascontiguousarray(AUGMENTATIONS[name](image)) for name in names]
