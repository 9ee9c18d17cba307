"""Features of reference images: read, check against the references' format, crop to the ROI, extract in chunks."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np

from okcell.extractor import FeatureExtractor, Features
from okcell.images import ImageError, read_image
from okcell.progress import Progress
from okcell.roi import Roi
from okcell.schema import ConfigError

Channels = Literal["mono", "colour"]


def channels_of(image: np.ndarray) -> Channels:
    return "mono" if image.ndim == 2 else "colour"


@dataclass(frozen=True)
class ReferenceFormat:
    """What every reference (and later every inspected frame) must look like: set by the first OK image."""

    channels: Channels
    image_size: tuple[int, int]  # (height, width) of the first OK image
    roi: Roi | None
    first_image: str

    @classmethod
    def from_first(cls, path: Path, roi: Roi | None) -> "ReferenceFormat":
        image = _read(path, roi)
        return cls(channels_of(image), (int(image.shape[0]), int(image.shape[1])), roi, str(path))

    def load(self, path: Path) -> np.ndarray:
        """Read ``path``, check it matches, return the ROI crop; ConfigError naming the file otherwise."""
        image = _read(path, self.roi)
        if channels_of(image) != self.channels:
            raise ConfigError(
                f"{path}: {channels_of(image)} image, but the references are {self.channels} (like {self.first_image}); "
                "calibrate with images from the same camera setting"
            )
        if self.roi is None:
            if image.shape[:2] != self.image_size:
                raise ConfigError(
                    f"{path}: {image.shape[1]}x{image.shape[0]} px, but the references are "
                    f"{self.image_size[1]}x{self.image_size[0]} px (like {self.first_image}); without --roi all images "
                    "must have the same size"
                )
            return image
        return self.roi.crop(image)


def _read(path: Path, roi: Roi | None) -> np.ndarray:
    try:
        return read_image(path, None if roi is None else (roi.y + roi.height, roi.x + roi.width))
    except ImageError as exc:
        detail = f" (ROI {roi} needs it)" if roi is not None and "smaller than" in str(exc) else ""
        raise ConfigError(f"{exc}{detail}") from None


def extract_images(
    extractor: FeatureExtractor,
    paths: Sequence[Path],
    reference: ReferenceFormat,
    label: str,
    batch_size: int = 8,
) -> Iterator[tuple[Sequence[Path], Features]]:
    """Yield (paths, features) batch by batch; only one batch of images is in memory at a time."""
    with Progress(label, len(paths), "images") as progress:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            features = extractor.extract([reference.load(path) for path in batch])
            progress.advance(len(batch))
            yield batch, features


class FeatureCache:
    """Patch features of many images in a temporary float16 file (read back by image), embeddings in memory.

    Plain file reads, not a memory map: pages read back do not stay in the process's resident memory."""

    def __init__(self, patches_per_image: int, feature_dim: int, directory: Path | None = None) -> None:
        self.shape = (patches_per_image, feature_dim)
        self._row_bytes = patches_per_image * feature_dim * 2
        handle, name = tempfile.mkstemp(prefix="okcell-features-", suffix=".f16", dir=directory)
        self._file = os.fdopen(handle, "w+b")
        self._path = Path(name)
        self._embeddings: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._embeddings)

    def append(self, features: Features) -> None:
        if features.patches.shape[1:] != self.shape:
            raise ValueError(f"patch features of shape {features.patches.shape[1:]}, cache holds {self.shape}")
        self._file.seek(0, os.SEEK_END)
        self._file.write(np.ascontiguousarray(features.patches, dtype=np.float16).tobytes())
        self._embeddings.extend(np.asarray(features.embedding, dtype=np.float32))

    def patches(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(rows), N, C) float32 patch features of the given images."""
        out = np.empty((len(rows), *self.shape), dtype=np.float32)
        self._file.flush()
        for i, row in enumerate(rows):
            self._file.seek(int(row) * self._row_bytes)
            out[i] = np.frombuffer(self._file.read(self._row_bytes), dtype=np.float16).reshape(self.shape)
        return out

    @property
    def embeddings(self) -> np.ndarray:
        return np.stack(self._embeddings) if self._embeddings else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
