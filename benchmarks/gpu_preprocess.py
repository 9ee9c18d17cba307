"""GPU preprocessing kernel vs the CPU reference on real photos: max abs error and p50/p99 timings.

    python benchmarks/gpu_preprocess.py --runtime pycuda --out results.json

``--runtime pycuda`` runs :class:`edge.backends.gpu_preprocess.GpuPreprocessor` (the backend's own launcher:
page-locked staging, async upload, kernel). ``--runtime cupy`` compiles the very same ``KERNEL_SOURCE`` with CuPy's
NVRTC ``RawModule`` (a check of the kernel where pycuda cannot be built). Timings: ``gpu_ms`` is upload + kernel on
the stream (CUDA events), ``cpu_ms`` the CPU reference ``Preprocessor.frame`` for the same frame.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any, Callable

import cv2
import numpy as np
import skimage.data

from edge.backends.gpu_preprocess import BLOCK, KERNEL_NAMES, KERNEL_SOURCE, kernel_args
from okcell.memory import peak_rss_mb
from okcell.preprocess import Preprocessor
from okcell.sidecar import ModelSidecar

TOLERANCE = 1e-3
SIDECAR = ModelSidecar(
    onnx_file="model.onnx", onnx_sha256="0" * 64, input_size=(224, 224), patch_size=14, feature_dim=384,
    embedding_dim=384, layers=(12,), layer_fusion="concat", dynamic_batch=False, opset=17, model_source={},
)


def frames() -> dict[str, np.ndarray]:
    """Real photos at camera-like sizes, RGB and mono, plus a non-contiguous ROI view."""
    astronaut, camera = skimage.data.astronaut(), skimage.data.camera()
    return {
        "astronaut_512x512_rgb": astronaut,
        "camera_512x512_mono": camera,
        "coffee_400x600_rgb": skimage.data.coffee(),
        "text_172x448_mono": skimage.data.text(),
        "retina_1411x1411_rgb": skimage.data.retina(),
        "hubble_1944x2592_rgb": cv2.resize(skimage.data.hubble_deep_field(), (2592, 1944)),
        "camera_1080x1440_mono": cv2.resize(camera, (1440, 1080)),
        "retina_roi_view_900x700_rgb": skimage.data.retina()[200:1100, 300:1000],
    }


Launch = Callable[[np.ndarray], np.ndarray]


def pycuda_runner(sidecar: ModelSidecar, dtype: np.dtype[Any]) -> tuple[Launch, Callable[[np.ndarray], float], Callable[[], None]]:
    import pycuda.driver as cuda

    from edge.backends.gpu_preprocess import GpuPreprocessor

    prep = GpuPreprocessor(sidecar, dtype, max_batch=1)
    stream = cuda.Stream()
    device = cuda.mem_alloc(prep.sample_bytes)
    host = cuda.pagelocked_empty((3, *sidecar.input_size), dtype)
    start, end = cuda.Event(), cuda.Event()

    def launch(image: np.ndarray) -> np.ndarray:
        prep.run([image], int(device), stream)
        cuda.memcpy_dtoh_async(host, device, stream)
        stream.synchronize()
        return host.copy()

    def timed(image: np.ndarray) -> float:
        start.record(stream)
        prep.run([image], int(device), stream)
        end.record(stream)
        end.synchronize()
        return float(end.time_since(start))

    def close() -> None:
        prep.close()
        device.free()

    return launch, timed, close


def cupy_runner(sidecar: ModelSidecar, dtype: np.dtype[Any]) -> tuple[Launch, Callable[[np.ndarray], float], Callable[[], None]]:
    import cupy

    reference = Preprocessor(sidecar)
    kernel = cupy.RawModule(code=KERNEL_SOURCE).get_function(KERNEL_NAMES[np.dtype(dtype)])
    out = cupy.empty((3, *sidecar.input_size), dtype)
    stream = cupy.cuda.Stream(non_blocking=True)
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    staging: dict[int, tuple[np.ndarray, Any]] = {}

    def run(image: np.ndarray) -> None:
        if image.nbytes not in staging:
            pinned = cupy.cuda.alloc_pinned_memory(image.nbytes)
            staging[image.nbytes] = (np.frombuffer(pinned, np.uint8, image.nbytes), cupy.empty(image.nbytes, cupy.uint8))
        host, device = staging[image.nbytes]
        np.copyto(host.reshape(image.shape), image)
        device.set(host, stream=stream)
        args = kernel_args(reference, image.shape, image.shape[1] * (1 if image.ndim == 2 else 3))
        with stream:
            kernel(args.grid(), BLOCK, (
                device, np.int32(args.src_h), np.int32(args.src_w), np.int32(args.src_pitch), np.int32(args.channels),
                out, np.int32(args.dst_h), np.int32(args.dst_w), np.float64(args.scale_x), np.float64(args.scale_y),
                *(np.float32(v) for v in args.mean), *(np.float32(v) for v in args.inv_std), np.int32(args.bgr_input),
            ))

    def launch(image: np.ndarray) -> np.ndarray:
        run(image)
        stream.synchronize()
        return cupy.asnumpy(out)

    def timed(image: np.ndarray) -> float:
        start.record(stream)
        run(image)
        end.record(stream)
        end.synchronize()
        return float(cupy.cuda.get_elapsed_time(start, end))

    return launch, timed, lambda: None


def percentiles(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples)
    return {"p50": round(float(np.percentile(values, 50)), 4), "p99": round(float(np.percentile(values, 99)), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", choices=["pycuda", "cupy"], required=True)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    if args.runtime == "pycuda":
        import pycuda.driver as cuda

        cuda.init()
        context = cuda.Device(0).retain_primary_context()
        context.push()
        device_name = cuda.Device(0).name()
    else:
        import cupy

        device_name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    make_runner = pycuda_runner if args.runtime == "pycuda" else cupy_runner
    rows = []
    worst = 0.0
    for input_size in ((224, 224), (448, 448)):
        for colour_order in ("RGB", "BGR"):
            sidecar = dataclasses.replace(SIDECAR, input_size=input_size, colour_order=colour_order)
            reference = Preprocessor(sidecar)
            for dtype in (np.dtype(np.float32), np.dtype(np.float16)):
                launch, timed, close = make_runner(sidecar, dtype)
                for name, image in frames().items():
                    expected = reference.frame(image)
                    got = launch(image).astype(np.float32)
                    error = float(np.abs(got - expected).max())
                    worst = max(worst, error)
                    row: dict[str, Any] = {
                        "frame": name, "input": f"{input_size[0]}x{input_size[1]}", "colour_order": colour_order,
                        "dtype": dtype.name, "max_abs_error": error, "bit_exact": bool(error == 0.0),
                    }
                    if colour_order == "RGB":  # time each (size, dtype, frame) once
                        for _ in range(10):
                            timed(image)
                        gpu = [timed(image) for _ in range(args.iterations)]
                        cpu = []
                        for _ in range(min(args.iterations, 50)):
                            begin = time.perf_counter()
                            reference.frame(image)
                            cpu.append((time.perf_counter() - begin) * 1e3)
                        row["gpu_ms"] = percentiles(gpu)
                        row["cpu_ms"] = percentiles(cpu)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                close()
    summary = {
        "runtime": args.runtime, "device": device_name, "tolerance": TOLERANCE, "max_abs_error": worst,
        "passed": worst <= TOLERANCE, "peak_host_rss_mib": round(peak_rss_mb(), 1),
        "rows": rows,
    }
    if args.runtime == "pycuda":
        context.pop()
    print(f"{args.runtime} on {device_name}: max abs error {worst:.3g} over {len(rows)} cases (tolerance {TOLERANCE}) "
          f"-> {'PASS' if summary['passed'] else 'FAIL'}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(summary, handle, indent=1)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
