"""Greedy k-center coreset on real image patches (scikit-image texture photographs)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from calibration.coreset import RandomProjection, SequentialCoreset, coverage_radius, greedy_kcenter, min_sq_distances


def texture_patches(size: int, stride: int) -> np.ndarray:
    """Raw grey-value patches of three texture photos, shuffled: (n, size * size) float32 in [0, 1]."""
    from skimage import data

    parts = []
    for name in ("brick", "gravel", "grass"):
        image = getattr(data, name)().astype(np.float32) / 255.0
        parts.append(sliding_window_view(image, (size, size))[::stride, ::stride].reshape(-1, size * size))
    patches = np.concatenate(parts).astype(np.float32)
    return patches[np.random.default_rng(0).permutation(len(patches))]


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return texture_patches(4, 3)[:12000]


def test_greedy_picks_are_spread_and_radius_shrinks(patches: np.ndarray) -> None:
    order = greedy_kcenter(patches, 301)
    assert len(set(order.tolist())) == 301
    radii = [coverage_radius(patches, patches[order[:m]]) for m in (10, 50, 100, 300)]
    assert all(a > b for a, b in zip(radii, radii[1:])), radii
    # greedy certificate (2-approximation): the first m + 1 picks are pairwise at least the radius of the first m apart
    radius = coverage_radius(patches, patches[order[:300]])
    picks = patches[order]
    for i in range(1, 301):
        nearest_earlier = np.sqrt(min_sq_distances(picks[i : i + 1], picks[:i]))[0]
        assert nearest_earlier >= radius - 1e-4
    random_subset = np.random.default_rng(1).choice(len(patches), 300, replace=False)
    assert radius < 0.8 * coverage_radius(patches, patches[random_subset])


def test_sequential_chunks_match_one_shot(patches: np.ndarray) -> None:
    coreset = SequentialCoreset(patches.shape[1], ratio=0.05, max_size=10**6)
    for start in range(0, len(patches), 1500):
        coreset.add(patches[start : start + 1500])
    assert len(coreset) == 600 and coreset.patches_seen == len(patches)
    # every center is one of the input patches, with its full features
    rows = {row.tobytes() for row in patches}
    assert all(center.tobytes() in rows for center in coreset.features)
    one_shot = coverage_radius(patches, patches[greedy_kcenter(patches, 600)])
    sequential = coverage_radius(patches, coreset.features)
    assert sequential <= 1.25 * one_shot, (sequential, one_shot)


def test_cap_bounds_size_and_keeps_coverage(patches: np.ndarray) -> None:
    coreset = SequentialCoreset(patches.shape[1], ratio=0.05, max_size=300)
    sizes = []
    for start in range(0, len(patches), 1500):
        coreset.add(patches[start : start + 1500])
        sizes.append(len(coreset))
    assert max(sizes) == 300 and sizes[-1] == 300
    one_shot = coverage_radius(patches, patches[greedy_kcenter(patches, 300)])
    assert coverage_radius(patches, coreset.features) <= 1.25 * one_shot


def test_projection_keeps_distances() -> None:
    patches = texture_patches(24, 12)[:600]  # 576 dimensions -> 128
    projected = RandomProjection(patches.shape[1], 128, seed=3)(patches)
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, len(patches), 2000), rng.integers(0, len(patches), 2000)
    keep = a != b
    original = np.linalg.norm(patches[a[keep]] - patches[b[keep]], axis=1)
    ratio = np.linalg.norm(projected[a[keep]] - projected[b[keep]], axis=1) / original
    assert np.quantile(ratio, 0.005) > 0.7 and np.quantile(ratio, 0.995) < 1.3


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="ratio"):
        SequentialCoreset(16, ratio=0.0, max_size=10)
    with pytest.raises(ValueError, match="max size"):
        SequentialCoreset(16, ratio=0.1, max_size=0)


def test_kept_patches_name_their_source_image(patches: np.ndarray) -> None:
    images = patches[:6000].reshape(60, 100, -1)  # 60 "images" of 100 patches
    for cap in (10**6, 200):  # growing, and re-selected from the pool at the cap
        coreset = SequentialCoreset(images.shape[2], ratio=0.05, max_size=cap)
        for start in range(0, 60, 8):
            chunk = np.arange(start, min(start + 8, 60))
            coreset.add(images[chunk].reshape(-1, images.shape[2]), np.repeat(chunk, 100))
        assert len(coreset.sources) == len(coreset) and len(set(coreset.sources.tolist())) > 20
        for center, source in zip(coreset.features, coreset.sources):
            assert (images[source] == center).all(axis=1).any()
