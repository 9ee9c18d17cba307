"""TensorRT feature extractor: engine from ``okcell build-engine``, pycuda stream, GPU preprocessing.

One execution context; tensors bound by name (``set_tensor_address``) and run with ``execute_async_v3``; device
buffers and page-locked host buffers are allocated once for the engine's largest batch. Frames are uploaded and
preprocessed on the GPU by :mod:`edge.backends.gpu_preprocess` (bit-identical to the CPU ``Preprocessor``).
With ``cuda_graph=True`` (needs the ``cuda-python`` package) the steady-state cycle — upload, preprocessing,
inference, download — is captured once per batch/frame-shape combination and replayed.
Outputs are what :class:`~edge.backends.onnxruntime_backend.OnnxRuntimeExtractor` returns: float32 patch
tokens and embedding, each L2-normalised, with the sidecar's patch grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import numpy as np

from okcell.extractor import Features
from export.engine_sidecar import EngineSidecar, current_target, engine_sidecar_path, verify_engine
from okcell.sidecar import load_verified
from okcell.schema import ConfigError

if TYPE_CHECKING:
    import tensorrt as trt

    from edge.backends.gpu_preprocess import GpuPreprocessor


def l2_normalise(values: np.ndarray) -> np.ndarray:
    """float32 copy of ``values`` with unit L2 norm along the last axis (FP16 engines drift by ~1e-3)."""
    values = values.astype(np.float32)
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    return values / np.maximum(norms, np.float32(1e-12))


class _Binding:
    """One engine I/O tensor: device buffer for the largest batch, page-locked host mirror for outputs."""

    def __init__(self, engine: "trt.ICudaEngine", name: str, max_batch: int, shape: tuple[int, ...]) -> None:
        import pycuda.driver as cuda
        import tensorrt as trt

        self.name = name
        self.dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        self.shape = shape  # without the batch axis
        self.device = cuda.mem_alloc(max_batch * int(np.prod(shape)) * self.dtype.itemsize)
        self.host = cuda.pagelocked_empty((max_batch, *shape), self.dtype)

    def free(self) -> None:
        self.device.free()


class TensorRTExtractor:
    """Runs an engine built by ``okcell build-engine`` for the ONNX next to it (or ``onnx_path``)."""

    backend_name = "tensorrt"

    def __init__(
        self, engine_path: Path | str, onnx_path: Path | str | None = None, cuda_graph: bool = False, device: int = 0
    ) -> None:
        import pycuda.driver as cuda
        import tensorrt as trt

        from edge.backends.gpu_preprocess import GpuPreprocessor

        self.engine_path = Path(engine_path)
        if onnx_path is None:  # the ONNX the engine was built from, expected next to it
            onnx_path = self.engine_path.parent / EngineSidecar.load(engine_sidecar_path(self.engine_path)).onnx_file
        self.onnx_path = Path(onnx_path)
        self.sidecar = load_verified(self.onnx_path)
        cuda.init()
        self.engine_info = verify_engine(self.engine_path, self.onnx_path, self.sidecar.onnx_sha256, current_target(device))
        self._context = cuda.Device(device).retain_primary_context()
        self._context.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self._engine is None:
                raise ConfigError(f"{self.engine_path}: TensorRT could not deserialize the engine (see its log above)")
            self._check_tensors()
            self._execution = self._engine.create_execution_context()
            self.max_batch = self.engine_info.batch[2]
            self.dynamic_batch = self.engine_info.batch != (1, 1, 1)
            rows, cols = self.sidecar.patch_grid
            patches_per_frame = (rows * cols, self.sidecar.feature_dim)
            self._input = _Binding(self._engine, self.sidecar.input_name, self.max_batch, (3, *self.sidecar.input_size))
            self._patches = _Binding(self._engine, self.sidecar.patch_output, self.max_batch, patches_per_frame)
            self._embedding = _Binding(self._engine, self.sidecar.embedding_output, self.max_batch, (self.sidecar.embedding_dim,))
            for binding in (self._input, self._patches, self._embedding):
                self._execution.set_tensor_address(binding.name, int(binding.device))
            self._stream = cuda.Stream()
            self._events = [cuda.Event() for _ in range(3)]
            self._preprocess: GpuPreprocessor = GpuPreprocessor(self.sidecar, self._input.dtype, self.max_batch)
            self._batch_shape: int | None = None
            self._graphs = CudaGraphs() if cuda_graph else None
        except BaseException:
            cuda.Context.pop()
            self._context.detach()
            raise
        cuda.Context.pop()

    def _check_tensors(self) -> None:
        import tensorrt as trt

        engine = self._engine
        found = {engine.get_tensor_name(i): engine.get_tensor_mode(engine.get_tensor_name(i)) for i in range(engine.num_io_tensors)}
        expected = {
            self.sidecar.input_name: trt.TensorIOMode.INPUT,
            self.sidecar.patch_output: trt.TensorIOMode.OUTPUT,
            self.sidecar.embedding_output: trt.TensorIOMode.OUTPUT,
        }
        if any(found.get(name) != mode for name, mode in expected.items()):
            raise ConfigError(
                f"{self.engine_path}: engine tensors {sorted(found)} do not match the model's "
                f"{sorted(expected)}; rebuild it with `okcell build-engine {self.onnx_path}`"
            )

    def extract(self, frames: Sequence[np.ndarray]) -> Features:
        if self._execution is None:
            raise RuntimeError(f"{self.engine_path}: extractor is closed")
        if len(frames) == 0:
            raise ValueError("extract() needs at least one frame")
        self._context.push()
        try:
            chunks = [frames[i : i + self.max_batch] for i in range(0, len(frames), self.max_batch)]
            results = [self._run(chunk) for chunk in chunks]
        finally:
            import pycuda.driver as cuda

            cuda.Context.pop()
        preprocess_ms = sum(r[2] for r in results)
        backbone_ms = sum(r[3] for r in results)
        return Features(
            patches=np.concatenate([r[0] for r in results]) if len(results) > 1 else results[0][0],
            embedding=np.concatenate([r[1] for r in results]) if len(results) > 1 else results[0][1],
            grid=self.sidecar.patch_grid,
            timings_ms={"preprocess": preprocess_ms, "backbone": backbone_ms},
        )

    def _enqueue(self, frames: Sequence[np.ndarray], timed: bool = True) -> None:
        """Upload, preprocessing, inference and download of one cycle, queued on the stream (what a CUDA graph
        captures, with ``timed=False``: events recorded during a capture are not replayed)."""
        import pycuda.driver as cuda

        batch = len(frames)
        start, preprocessed, done = self._events
        if timed:
            start.record(self._stream)
        self._preprocess.run(frames, int(self._input.device), self._stream)
        if timed:
            preprocessed.record(self._stream)
        if not self._execution.execute_async_v3(self._stream.handle):
            raise RuntimeError(f"{self.engine_path}: TensorRT execution failed (see its log)")
        for output in (self._patches, self._embedding):
            cuda.memcpy_dtoh_async(output.host[:batch], output.device, self._stream)
        if timed:
            done.record(self._stream)

    def _run(self, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float, float]:
        batch = len(frames)
        if self.dynamic_batch and batch != self._batch_shape:
            self._execution.set_input_shape(self._input.name, (batch, *self._input.shape))
            self._batch_shape = batch
        start, preprocessed, done = self._events
        if self._graphs is None:
            self._enqueue(frames)
        else:
            self._preprocess.stage(frames)
            start.record(self._stream)
            preprocessed.record(self._stream)  # one launch: the whole cycle is reported as "backbone"
            key = tuple(frame.shape for frame in frames)
            if self._graphs.launch(key, self._stream.handle, lambda: self._enqueue(frames, timed=False)):
                done.record(self._stream)
            else:
                self._enqueue(frames)
        done.synchronize()
        return (
            l2_normalise(self._patches.host[:batch]),
            l2_normalise(self._embedding.host[:batch]),
            preprocessed.time_since(start),
            done.time_since(preprocessed),
        )

    def close(self) -> None:
        if self._execution is None:
            return
        self._context.push()
        try:
            self._stream.synchronize()
            if self._graphs is not None:
                self._graphs.close()
            self._preprocess.close()
            for binding in (self._input, self._patches, self._embedding):
                binding.free()
            self._execution = None  # type: ignore[assignment]
            self._engine = None  # type: ignore[assignment]
        finally:
            import pycuda.driver as cuda

            cuda.Context.pop()
        self._context.detach()


class CudaGraphs:
    """Captured CUDA graphs keyed by the cycle's shapes: the first cycle of a key runs normally (TensorRT settles
    shapes and lazy allocations outside a capture), the second is captured, every later one is a single launch.

    Uses the CUDA runtime bindings of ``cuda-python`` (pycuda has no stream capture). Host-side work (staging frames
    into page-locked memory) is not part of a graph: the caller does it before each launch."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime
        except ImportError:
            raise ConfigError("cuda_graph needs the cuda-python package (pip install cuda-python)") from None
        self._runtime: Any = runtime
        self._seen: set[Hashable] = set()
        self._graphs: dict[Hashable, tuple[Any, Any]] = {}

    def _check(self, result: Any) -> Any:
        error, *values = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            raise RuntimeError(f"CUDA graph call failed: {self._runtime.cudaGetErrorString(error)[1].decode()}")
        return values[0] if len(values) == 1 else values

    def launch(self, key: Hashable, stream: int, enqueue: Callable[[], None]) -> bool:
        """Launch the graph of ``key`` on ``stream`` (capturing ``enqueue`` first if needed) and return True; return
        False, without queueing anything, the first time ``key`` is seen: the caller then runs the cycle itself."""
        if key not in self._seen:
            self._seen.add(key)
            return False
        if key not in self._graphs:
            rt = self._runtime
            self._check(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            try:
                enqueue()
            finally:
                graph = self._check(rt.cudaStreamEndCapture(stream))
            self._graphs[key] = (graph, self._check(rt.cudaGraphInstantiate(graph, 0)))
        self._check(self._runtime.cudaGraphLaunch(self._graphs[key][1], stream))
        return True

    def close(self) -> None:
        for graph, executable in self._graphs.values():
            self._runtime.cudaGraphExecDestroy(executable)
            self._runtime.cudaGraphDestroy(graph)
        self._graphs.clear()
