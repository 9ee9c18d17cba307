"""INT8 calibration data for ``okcell build-engine --int8``: reference images -> batches, and a reusable cache.

:class:`CalibrationFeed` is the framework-free part (tested everywhere): images are read with
:func:`okcell.images.read_image` and preprocessed by :class:`okcell.preprocess.Preprocessor`, exactly as
at run time, in file-name order. The calibration cache is written next to a small JSON key; a later build of the
same model and preprocessing reads the cache and never opens an image. :func:`entropy_calibrator` wraps a feed in
TensorRT's ``IInt8EntropyCalibrator2`` (tensorrt and pycuda imported there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from okcell.images import ImageError, list_images, read_image
from okcell.preprocess import Preprocessor
from okcell.progress import Progress
from okcell.sidecar import ModelSidecar
from okcell.schema import ConfigError

log = logging.getLogger(__name__)


class CalibrationBatches:
    """Reference images of a folder as float32 batches (B, 3, H, W), in sorted file-name order.

    A last partial batch is left out (TensorRT calibrates with one fixed batch shape); at least one full batch is
    required. Images are read only while iterating; ``images_read`` counts them."""

    def __init__(self, folder: Path, sidecar: ModelSidecar, batch_size: int) -> None:
        if batch_size < 1:
            raise ConfigError(f"calibration batch size must be at least 1, found {batch_size}")
        self.folder = Path(folder)
        self.batch_size = batch_size
        self.preprocessor = Preprocessor(sidecar)
        try:
            self.paths = list_images(self.folder)
        except ImageError as exc:
            raise ConfigError(str(exc)) from None
        self.num_batches = len(self.paths) // batch_size
        if self.num_batches == 0:
            raise ConfigError(
                f"{self.folder}: {len(self.paths)} image(s), INT8 calibration needs at least {batch_size} "
                "(one batch; a few hundred good parts are recommended)"
            )
        self.images_read = 0

    @property
    def used_paths(self) -> list[Path]:
        return self.paths[: self.num_batches * self.batch_size]

    def digest(self) -> str:
        """Identity of the image set (names, sizes, modification times; contents are not read)."""
        digest = hashlib.sha256()
        for path in self.used_paths:
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def __iter__(self) -> Iterator[np.ndarray]:
        min_size = (1, 1)
        for start in range(0, self.num_batches * self.batch_size, self.batch_size):
            frames = []
            for path in self.paths[start : start + self.batch_size]:
                try:
                    frames.append(read_image(path, min_size))
                except ImageError as exc:
                    raise ConfigError(f"calibration image {exc}") from None
                self.images_read += 1
            yield self.preprocessor.batch(frames)


def cache_key(sidecar: ModelSidecar, batch_size: int) -> dict[str, Any]:
    """What a calibration cache depends on besides the images: the model and its preprocessing."""
    return {
        "onnx_sha256": sidecar.onnx_sha256,
        "input_size": list(sidecar.input_size),
        "colour_order": sidecar.colour_order,
        "mean": list(sidecar.mean),
        "std": list(sidecar.std),
        "batch_size": batch_size,
        "algorithm": "entropy2",
    }


class CalibrationFeed:
    """The data side of TensorRT's calibrator protocol: cache first, otherwise batches, then store the cache.

    ``images``: folder of reference images, or None to rely on an existing cache alone."""

    def __init__(self, sidecar: ModelSidecar, cache_path: Path, images: Path | None, batch_size: int = 8) -> None:
        self.cache_path = Path(cache_path)
        self.key_path = self.cache_path.with_name(self.cache_path.name + ".json")
        self.key = cache_key(sidecar, batch_size)
        self.batch_size = batch_size
        self.input_shape = (batch_size, 3, *sidecar.input_size)
        self._sidecar = sidecar
        self._images = Path(images) if images is not None else None
        self._batches: CalibrationBatches | None = None
        self._iterator: Iterator[np.ndarray] | None = None
        self._progress: Progress | None = None
        self.batches_served = 0
        if self._images is None and self.read_cache() is None:
            raise ConfigError(
                f"{self.cache_path}: no usable INT8 calibration cache for this model; "
                "give reference images with --calib-images DIR"
            )

    @property
    def batches(self) -> CalibrationBatches:
        """The image batches (listed on first use)."""
        if self._batches is None:
            if self._images is None:
                raise ConfigError(f"{self.cache_path}: calibration cache unusable and no --calib-images given")
            self._batches = CalibrationBatches(self._images, self._sidecar, self.batch_size)
        return self._batches

    def read_cache(self) -> bytes | None:
        """The stored cache if it was made for this model, preprocessing and batch size (and, when the image folder
        exists, for the same image set); None otherwise."""
        if not self.cache_path.is_file() or not self.key_path.is_file():
            return None
        try:
            stored = json.loads(self.key_path.read_text())
        except json.JSONDecodeError:
            log.warning("%s: unreadable cache key; calibrating again", self.key_path)
            return None
        model_key = {k: v for k, v in stored.items() if k not in ("images", "image_count")}
        if model_key != self.key:
            log.info("%s: made for another model or preprocessing; calibrating again", self.cache_path)
            return None
        if self._images is not None and self._images.is_dir() and stored.get("images") != self.batches.digest():
            log.info("%s: the images in %s changed since it was made; calibrating again", self.cache_path, self._images)
            return None
        log.info("using INT8 calibration cache %s (%s images)", self.cache_path, stored.get("image_count", "?"))
        return self.cache_path.read_bytes()

    def next_batch(self) -> np.ndarray | None:
        """The next preprocessed batch, or None when all are served. Shows progress on stderr."""
        if self._iterator is None or self._progress is None:
            self._iterator = iter(self.batches)
            self._progress = Progress("INT8 calibration", self.batches.num_batches, "batches")
        batch = next(self._iterator, None)
        if batch is None:
            self._progress.close()
        else:
            self.batches_served += 1
            self._progress.advance()
        return batch

    def write_cache(self, data: bytes) -> None:
        """Store TensorRT's cache and its key (each written to a temporary file, then renamed)."""
        key = {**self.key, "images": self.batches.digest(), "image_count": len(self.batches.used_paths)}
        for path, payload in ((self.cache_path, bytes(data)), (self.key_path, (json.dumps(key, indent=2) + "\n").encode())):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(payload)
            os.replace(tmp, path)
        log.info("wrote INT8 calibration cache %s", self.cache_path)


def entropy_calibrator(feed: CalibrationFeed) -> Any:
    """A ``tensorrt.IInt8EntropyCalibrator2`` serving ``feed`` from one device buffer (needs a CUDA context)."""
    import pycuda.driver as cuda
    import tensorrt as trt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.device = cuda.mem_alloc(int(np.prod(feed.input_shape)) * np.dtype(np.float32).itemsize)

        def get_batch_size(self) -> int:
            return feed.batch_size

        def get_batch(self, names: list[str]) -> list[int]:
            batch = feed.next_batch()
            if batch is None:
                return []
            cuda.memcpy_htod(self.device, np.ascontiguousarray(batch, dtype=np.float32))
            return [int(self.device)]

        # TensorRT treats None as "no cache" (see its own example); the stub only names the buffer case.
        def read_calibration_cache(self) -> bytes | None:  # type: ignore[override]
            return feed.read_cache()

        def write_calibration_cache(self, cache: Any) -> None:
            feed.write_cache(bytes(cache))

    return EntropyCalibrator()
