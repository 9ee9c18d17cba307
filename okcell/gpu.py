"""Whether this machine can run the TensorRT path: the ``gpu`` extra (tensorrt + pycuda) imports or says why not."""

from __future__ import annotations

GPU_EXTRA_HINT = "install the gpu extra on the target: TensorRT from JetPack/NVIDIA (python3-libnvinfer) and `pip install pycuda`"


def gpu_extra_missing() -> str | None:
    """None when tensorrt and pycuda import here; otherwise what is missing, e.g. ``"pycuda (No module named ...)"``."""
    missing = []
    try:
        import tensorrt

        if not hasattr(tensorrt, "Builder"):  # tensorrt-stubs alone leave an empty namespace package
            missing.append("tensorrt (only its type stubs are installed)")
    except Exception as exc:  # ImportError, or OSError when libnvinfer is absent
        missing.append(f"tensorrt ({exc})")
    try:
        import pycuda.driver  # noqa: F401
    except Exception as exc:
        missing.append(f"pycuda ({exc})")
    return "; ".join(missing) or None
