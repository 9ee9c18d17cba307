"""Reading image files: truncated files and broken or looping symbolic links are refused, naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.demo_data import make_part, texture
from okcell.images import ImageError, read_image


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jpeg") / "part.jpg"
    assert cv2.imwrite(str(path), make_part(texture("brick"), 256, np.random.default_rng(0))[:, :, ::-1])
    return path


def test_whole_jpeg_is_read(jpeg: Path, tmp_path: Path) -> None:
    assert read_image(jpeg).shape == (256, 256, 3)
    trailing = tmp_path / "trailing.jpg"  # some cameras append bytes after the end-of-image marker
    trailing.write_bytes(jpeg.read_bytes() + b"\x00" * 16 + b"vendor data")
    assert np.array_equal(read_image(trailing), read_image(jpeg))


@pytest.mark.parametrize("cut", [2, 100, 0.5])
def test_truncated_jpeg_is_refused(jpeg: Path, tmp_path: Path, cut: float) -> None:
    data = jpeg.read_bytes()
    end = int(len(data) * cut) if cut < 1 else len(data) - int(cut)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[:end])
    with pytest.raises(ImageError, match=r"truncated\.jpg: truncated JPEG") as caught:
        read_image(truncated)
    assert caught.value.path == truncated and str(truncated) not in caught.value.reason


def test_broken_and_looping_links_are_named(jpeg: Path, tmp_path: Path) -> None:
    broken, loop = tmp_path / "broken.jpg", tmp_path / "loop.jpg"
    os.symlink(tmp_path / "gone.jpg", broken)
    os.symlink(loop, loop)
    with pytest.raises(ImageError, match=rf"broken\.jpg: broken symbolic link \(to {tmp_path / 'gone.jpg'}\)"):
        read_image(broken)
    with pytest.raises(ImageError, match=r"loop\.jpg: symbolic link loop"):
        read_image(loop)
    with pytest.raises(ImageError, match=r"missing\.jpg: no such file"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match=rf"{tmp_path.name}: not a file"):
        read_image(tmp_path)
