"""Features of reference images: read, check against the references' format, crop to the ROI, lay out by the
recipe's sizing rule (images may differ in size), extract in chunks."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np

from calibration.augment import augmented
from okcell.extractor import FeatureExtractor
from okcell.frames import CropFeatures, extract_crops
from okcell.images import ImageError, read_image
from okcell.progress import Progress
from okcell.roi import Roi
from okcell.schema import ConfigError
from okcell.sizing import Sizing

Channels = Literal["mono", "colour"]


def channels_of(image: np.ndarray) -> Channels:
    return "mono" if image.ndim == 2 else "colour"


@dataclass(frozen=True)
class ReferenceFormat:
    """What every reference (and later every inspected frame) must look like: set by the first OK image. Sizes may
    differ (the sizing rule handles any size); with a ROI every image must contain it."""

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
        return image if self.roi is None else self.roi.crop(image)

    @property
    def crop_size(self) -> tuple[int, int]:
        """(height, width) of the first reference's crop (the ROI, or the whole first image)."""
        return self.image_size if self.roi is None else self.roi.size


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
    sizing: Sizing,
    batch_size: int = 8,
    augment: tuple[str, ...] = (),
) -> Iterator[tuple[Sequence[Path], list[list[CropFeatures]]]]:
    """Yield (paths, per path [its crop's features, then each ``augment`` copy's]) batch by batch; only one batch
    of images is in memory at a time."""
    per_image = 1 + len(augment)
    with Progress(label, len(paths), "images") as progress:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            crops = []
            for path in batch:
                crop = reference.load(path)
                crops += [crop, *augmented(crop, augment)]
            features = extract_crops(extractor, crops, sizing)
            progress.advance(len(batch))
            yield batch, [features[i : i + per_image] for i in range(0, len(features), per_image)]


class FeatureCache:
    """Frame patches of many crops in a temporary float16 file (read back by crop); layouts, embeddings and the
    reference each crop came from in memory.

    Plain file reads, not a memory map: pages read back do not stay in the process's resident memory."""

    def __init__(self, feature_dim: int, directory: Path | None = None) -> None:
        self.feature_dim = feature_dim
        handle, name = tempfile.mkstemp(prefix="okcell-features-", suffix=".f16", dir=directory)
        self._file = os.fdopen(handle, "w+b")
        self._path = Path(name)
        self._offsets: list[tuple[int, tuple[int, ...]]] = []
        self._crops: list[CropFeatures] = []  # layout and embedding only (patches are in the file)
        self.sources: list[int] = []  # index of the reference image each crop shows
        self.original: list[bool] = []  # False for augmented copies

    def __len__(self) -> int:
        return len(self._offsets)

    def append(self, crop: CropFeatures, source: int, original: bool = True) -> None:
        if crop.patches.ndim != 3 or crop.patches.shape[2] != self.feature_dim:
            raise ValueError(f"patch features of shape {crop.patches.shape}, cache holds (frames, N, {self.feature_dim})")
        self._file.seek(0, os.SEEK_END)
        self._offsets.append((self._file.tell(), crop.patches.shape))
        self._file.write(np.ascontiguousarray(crop.patches, dtype=np.float16).tobytes())
        self._crops.append(CropFeatures(crop.layout, np.zeros((0, 0, 0), np.float32), np.asarray(crop.embedding, np.float32)))
        self.sources.append(source)
        self.original.append(original)

    def crop(self, row: int) -> CropFeatures:
        """The features of crop ``row`` (patches as float32)."""
        offset, shape = self._offsets[row]
        self._file.flush()
        self._file.seek(offset)
        count = int(np.prod(shape))
        patches = np.frombuffer(self._file.read(2 * count), dtype=np.float16).reshape(shape).astype(np.float32)
        stored = self._crops[row]
        return CropFeatures(stored.layout, patches, stored.embedding)

    def rows(self, sources: Sequence[int] | np.ndarray, originals_only: bool = False) -> list[int]:
        """Rows of the crops of the given reference images (with their augmented copies unless ``originals_only``)."""
        wanted = set(int(s) for s in sources)
        return [row for row, (source, original) in enumerate(zip(self.sources, self.original))
                if source in wanted and (original or not originals_only)]

    @property
    def embeddings(self) -> np.ndarray:
        """(references, D) embeddings of the original (not augmented) crops."""
        chosen = [c.embedding for c, original in zip(self._crops, self.original) if original]
        return np.stack(chosen) if chosen else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
