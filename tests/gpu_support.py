"""Skip a GPU-only test, with the reason, where pycuda (and any other named module) or a CUDA device is missing."""

from __future__ import annotations

import importlib

import pytest


def require_cuda_device(check: str, modules: tuple[str, ...] = ()) -> None:
    """Skip ``check`` (named in the reason) unless pycuda, ``modules`` and a CUDA device are all available."""
    try:
        import pycuda.driver as cuda

        for module in modules:
            importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"{check} needs pycuda{''.join(', ' + m for m in modules)} (the `gpu` extra): {exc}")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            pytest.skip(f"{check} needs a CUDA device; none found")
    except cuda.Error as exc:
        pytest.skip(f"{check} needs a CUDA device: {exc}")
