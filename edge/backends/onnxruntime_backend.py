"""ONNX Runtime (CPU) feature extractor: the reference backend and the one used where no NVIDIA GPU is present."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from okcell.extractor import Features
from okcell.preprocess import Preprocessor
from okcell.sidecar import load_verified
from okcell.schema import ConfigError


class OnnxRuntimeExtractor:
    """Runs an ``okcell export`` model with ONNX Runtime's CPU execution provider.

    ``threads``: intra-op threads (None: ONNX Runtime's default, one per physical core). A model exported without
    ``--dynamic-batch`` is run once per frame."""

    backend_name = "onnxruntime"

    def __init__(self, onnx_path: Path | str, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.onnx_path = Path(onnx_path)
        self.sidecar = load_verified(self.onnx_path)
        if threads is not None and threads < 1:
            raise ConfigError(f"onnxruntime threads: expected a positive number, found {threads}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConfigError(f"{self.onnx_path}: ONNX Runtime cannot load the model ({exc})") from exc
        self.preprocessor = Preprocessor(self.sidecar)
        self._outputs = [self.sidecar.patch_output, self.sidecar.embedding_output]

    def extract(self, frames: Sequence[np.ndarray]) -> Features:
        if self._session is None:
            raise RuntimeError(f"{self.onnx_path}: extractor is closed")
        if len(frames) == 0:
            raise ValueError("extract() needs at least one frame")
        start = time.perf_counter()
        batch = self.preprocessor.batch(frames)
        preprocessed = time.perf_counter()
        chunks = [batch] if self.sidecar.dynamic_batch else [batch[i : i + 1] for i in range(len(batch))]
        session = self._session
        results = [session.run(self._outputs, {self.sidecar.input_name: chunk}) for chunk in chunks]
        done = time.perf_counter()
        patches = np.concatenate([r[0] for r in results]) if len(results) > 1 else results[0][0]
        embedding = np.concatenate([r[1] for r in results]) if len(results) > 1 else results[0][1]
        return Features(
            patches=np.ascontiguousarray(patches, dtype=np.float32),
            embedding=np.ascontiguousarray(embedding, dtype=np.float32),
            grid=self.sidecar.patch_grid,
            timings_ms={"preprocess": (preprocessed - start) * 1e3, "backbone": (done - preprocessed) * 1e3},
        )

    def close(self) -> None:
        self._session = None
