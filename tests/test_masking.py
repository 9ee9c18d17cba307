"""Background masks on synthetic patch features: growth, the fitted PCA direction's sign and threshold, mask images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from okcell.masking import ImageMask, PcaMask, grow
from okcell.schema import ConfigError
from okcell.sizing import Sizing

PATCH = 14


def test_grow_adds_one_cell_all_round_and_never_reaches_for_the_border() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:6] = True  # two cells from the top border
    grown = grow(mask)
    expected = np.zeros((8, 8), bool)
    expected[1:6, 2:7] = True
    assert (grown == expected).all()
    touching = np.zeros((6, 6), bool)
    touching[0:2, 0:2] = True  # a part cut by the frame edge stays cut there
    assert grow(touching).sum() == 9


PART_CENTRE, BACKGROUND_CENTRE = np.random.default_rng(1).normal(size=(2, 16))


def features_of(foreground: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(1, N, C) unit features: two clusters, part and background, with noise."""
    part, background = PART_CENTRE, BACKGROUND_CENTRE
    rows = np.where(foreground.ravel()[:, None], part, background) + 0.3 * rng.normal(size=(foreground.size, 16))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True))[None].astype(np.float32)


def test_pca_mask_finds_the_part_whichever_sign_the_component_has(tmp_path: Path) -> None:
    layout = Sizing("stretch").layout((112, 112), (112, 112), PATCH)
    part = np.zeros((8, 8), bool)
    part[2:6, 2:6] = True
    rng = np.random.default_rng(0)
    references = [(features_of(part, rng), layout) for _ in range(6)]
    mask = PcaMask.fit(references)
    found = mask.foreground(features_of(part, rng), layout)
    assert (found == grow(part)).all()
    mirrored = PcaMask.fit([(-f, layout) for f, _ in references])  # the component's sign flips, the part stays found
    assert float(mirrored.direction @ mask.direction) < 0
    assert (mirrored.foreground(-features_of(part, rng), layout) == grow(part)).all()
    mask.save(tmp_path / "mask.npz")
    loaded = PcaMask.load(tmp_path / "mask.npz", 16)
    assert np.array_equal(loaded.direction, mask.direction) and loaded.threshold == pytest.approx(mask.threshold)
    with pytest.raises(ConfigError, match="mask.npz: PCA mask for .* features, the model has 384"):
        PcaMask.load(tmp_path / "mask.npz", 384)


def test_mask_image_is_scaled_to_each_crop() -> None:
    drawn = np.zeros((100, 100), np.uint8)
    drawn[:, :50] = 255  # inspect the left half
    mask = ImageMask(drawn)
    for size in ((112, 112), (224, 112)):
        layout = Sizing("stretch").layout(size, (112, 112), PATCH)
        found = mask.foreground(np.zeros((1, 64, 4), np.float32), layout)
        assert found[:, :4].all() and not found[:, 4:].any()
    with pytest.raises(ValueError, match="at least one non-zero pixel"):
        ImageMask(np.zeros((10, 10), np.uint8))
