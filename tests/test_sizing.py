"""Sizing rules (stretch, letterbox, tile): frames, grid, padding, tile origins and stitching, by hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from okcell.schema import ConfigError
from okcell.sizing import PAD_COLOUR, Sizing, aspect_preserving_size, stretch_warning, tile_origins

PATCH = 14


def test_stretch_hands_the_crop_to_the_backend() -> None:
    layout = Sizing("stretch").layout((1250, 500), (448, 448), PATCH)
    crop = np.zeros((1250, 500), np.uint8)
    assert layout.frames(crop)[0] is crop  # the backend resizes it, as before sizing rules existed
    assert layout.grid == (32, 32) and layout.extent == (1250, 500) and layout.valid().all()
    assert layout.cells().tolist() == [list(range(32 * 32))]


def test_letterbox_keeps_the_aspect_and_masks_the_padding() -> None:
    layout = Sizing("letterbox").layout((100, 250), (224, 224), PATCH)
    assert layout.canvas_size == (90, 224)  # 250 px wide fills 224; 100 px tall -> 89.6 -> 90
    frame = layout.frames(np.full((100, 250, 3), 7, np.uint8))[0]
    assert frame.shape == (224, 224, 3)
    assert (frame[:90] == 7).all() and (frame[90:] == PAD_COLOUR).all()
    valid = layout.valid()
    assert valid[:6].all() and not valid[7:].any()  # row 6 spans 84..98, centre 91 > 90: padding
    assert not valid[6].any()
    assert layout.extent == (round(224 * 100 / 90), 250)  # the grid reaches below the crop
    mono = layout.frames(np.zeros((100, 250), np.uint8))[0]
    assert mono.shape == (224, 224) and mono[200, 0] == round(np.mean(PAD_COLOUR))


def test_tile_origins_cover_with_overlap_on_the_patch_grid() -> None:
    assert tile_origins(224, 224, 0.25, PATCH) == [0]
    assert tile_origins(560, 224, 0.25, PATCH) == [0, 168, 336]  # stride 168 = 224 * 0.75, 3 tiles
    for length in range(224, 1500, PATCH):
        origins = tile_origins(length, 224, 0.25, PATCH)
        assert origins[0] == 0 and origins[-1] == length - 224
        assert all(o % PATCH == 0 for o in origins)
        assert all(224 - (b - a) >= 0.25 * 224 - PATCH for a, b in zip(origins, origins[1:]))


def test_tile_scale_is_fixed_at_calibration_and_new_sizes_get_more_tiles() -> None:
    sizing = Sizing("tile").resolved((1250, 500), (448, 448))
    assert sizing.tile_scale == pytest.approx(448 / 500)
    layout = sizing.layout((1250, 500), (448, 448), PATCH)
    assert layout.canvas_size == (1120, 448) and layout.origins == ((0, 0), (336, 0), (672, 0))
    assert layout.grid == (80, 32) and layout.extent == (1250, 500)
    longer = sizing.layout((1600, 500), (448, 448), PATCH)
    assert longer.canvas_size == (1428, 448) and len(longer.origins) == 4
    frames = layout.frames(np.zeros((1250, 500, 3), np.uint8))
    assert [f.shape for f in frames] == [(448, 448, 3)] * 3


def test_stitch_averages_the_tiles_that_cover_a_cell() -> None:
    layout = Sizing("tile", tile_scale=1.0, tile_overlap=0.5).layout((56, 28), (28, 28), PATCH)
    assert layout.origins == ((0, 0), (14, 0), (28, 0)) and layout.grid == (4, 2)
    values = np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0], [5.0, 5.0, 5.0, 5.0]])  # 2x2 patches per tile
    stitched = layout.stitch(values)
    assert stitched.tolist() == [[1, 1], [2, 2], [4, 4], [5, 5]]  # rows 1 and 2 are covered twice
    with pytest.raises(ValueError, match="layout has"):
        layout.stitch(values[:2])


def test_sizing_round_trips_and_rejects_bad_values() -> None:
    for sizing in (Sizing("stretch"), Sizing("letterbox"), Sizing("tile", 0.75, 0.3)):
        assert Sizing.from_json(sizing.to_json(), "recipe") == sizing
    with pytest.raises(ConfigError, match="recipe: sizing 'crop': expected one of stretch, letterbox, tile"):
        Sizing.from_json({"mode": "crop"}, "recipe")
    with pytest.raises(ConfigError, match="takes the fields"):
        Sizing.from_json({"mode": "stretch", "tile_scale": 1.0}, "recipe")
    with pytest.raises(ConfigError, match=r"tile scale 0.0: expected model pixels per image pixel in \(0, 8\]"):
        Sizing("tile", 0.0)
    with pytest.raises(ConfigError, match="tile overlap 0.95"):
        Sizing("tile", 1.0, 0.95)


def test_stretch_warning_suggests_an_aspect_preserving_export() -> None:
    assert aspect_preserving_size((1250, 500), (448, 448), PATCH) == (714, 280)
    assert stretch_warning((512, 512), (448, 448), PATCH) is None
    assert stretch_warning((1000, 1080), (448, 448), PATCH) is None  # within 10 %
    warning = stretch_warning((1250, 500), (448, 448), PATCH)
    assert warning is not None and "distorts their aspect 2.5x" in warning and "--size 714x280" in warning
