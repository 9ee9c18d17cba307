"""The GPU preprocessing kernel against the CPU reference (`Preprocessor`).

Here (no GPU): a numpy emulation of the kernel's exact arithmetic (same index math, same fixed-point weights,
same rounding) must equal `Preprocessor` bit for bit on real photos at many sizes. Where pycuda and a CUDA
device exist, the real kernel is compared too (max abs error <= 1e-3, fp32 and fp16).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import skimage.data

from edge.backends import gpu_preprocess
from edge.backends.gpu_preprocess import KERNEL_SOURCE, PREPARED_ARGS, check_frame, kernel_args
from okcell.preprocess import Preprocessor
from okcell.sidecar import ModelSidecar
from gpu_support import require_cuda_device

SIDECAR = ModelSidecar(
    onnx_file="model.onnx", onnx_sha256="0" * 64, input_size=(224, 224), patch_size=14, feature_dim=384,
    embedding_dim=384, layers=(12,), layer_fusion="concat", dynamic_batch=False, opset=17, model_source={},
)
PHOTOS = ("astronaut", "coffee", "camera", "text", "rocket", "hubble_deep_field")


def sidecar_for(height: int, width: int, colour_order: str = "RGB") -> ModelSidecar:
    return dataclasses.replace(SIDECAR, input_size=(height, width), colour_order=colour_order)


def _coordinates(dst: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    return s, (f - s.astype(np.float32)).astype(np.float32)


def _fixed(weight: np.ndarray) -> np.ndarray:
    return np.rint(weight * np.float32(2048.0)).astype(np.int64)


def emulate_kernel(image: np.ndarray, reference: Preprocessor) -> np.ndarray:
    """What the CUDA kernel computes, thread by thread, written with numpy arrays (one lane per output pixel)."""
    args = kernel_args(reference, image.shape, image.shape[1] * (1 if image.ndim == 2 else 3))
    src = image.reshape(args.src_h, args.src_w, args.channels).astype(np.int64)
    sx, fx = _coordinates(args.dst_w, args.scale_x)
    left = sx < 0
    fx, sx = np.where(left, np.float32(0), fx), np.where(left, 0, sx)
    right = sx >= args.src_w - 1
    fx, sx = np.where(right, np.float32(0), fx), np.where(right, args.src_w - 1, sx)
    sx1 = np.minimum(sx + 1, args.src_w - 1)
    ax0, ax1 = _fixed(np.float32(1) - fx)[None, :], _fixed(fx)[None, :]
    sy, fy = _coordinates(args.dst_h, args.scale_y)
    by0, by1 = _fixed(np.float32(1) - fy)[:, None], _fixed(fy)[:, None]
    row0, row1 = np.clip(sy, 0, args.src_h - 1), np.clip(sy + 1, 0, args.src_h - 1)
    out = np.empty((3, args.dst_h, args.dst_w), np.float32)
    for c in range(3):
        sc = 0 if args.channels == 1 else (2 - c if args.bgr_input else c)
        plane = src[:, :, sc]
        h0 = plane[row0][:, sx] * ax0 + plane[row0][:, sx1] * ax1
        h1 = plane[row1][:, sx] * ax0 + plane[row1][:, sx1] * ax1
        v = np.clip((((by0 * (h0 >> 4)) >> 16) + ((by1 * (h1 >> 4)) >> 16) + 2) >> 2, 0, 255)
        out[c] = (v.astype(np.float32) - np.float32(args.mean[c])) * np.float32(args.inv_std[c])
    return out


def photo(name: str) -> np.ndarray:
    return np.ascontiguousarray(getattr(skimage.data, name)())


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("size", [(224, 224), (448, 448), (224, 336), (518, 518)])
def test_emulated_kernel_equals_cpu_reference_on_photos(name: str, size: tuple[int, int]) -> None:
    reference = Preprocessor(sidecar_for(*size))
    image = photo(name)
    np.testing.assert_array_equal(emulate_kernel(image, reference), reference.frame(image))


@pytest.mark.parametrize("colour_order", ["RGB", "BGR"])
def test_emulated_kernel_channel_order_and_mono(colour_order: str) -> None:
    reference = Preprocessor(sidecar_for(224, 224, colour_order))
    for image in (photo("astronaut"), photo("camera")):
        np.testing.assert_array_equal(emulate_kernel(image, reference), reference.frame(image))


def test_emulated_kernel_on_random_crops_of_photos() -> None:
    """Random crop sizes (down- and up-scaling, exact 2x, identity, 1-pixel-wide edges) of real photos."""
    rng = np.random.default_rng(3)
    retina, camera = photo("retina"), photo("camera")
    reference = Preprocessor(sidecar_for(224, 224))
    shapes = [(448, 448), (224, 224), (112, 224), (2, 2), (1, 300), (300, 1)]
    shapes += [(int(h), int(w)) for h, w in (rng.integers(2, 1400, 2) for _ in range(60))]
    for index, (height, width) in enumerate(shapes):
        source = retina if index % 2 else camera
        top = int(rng.integers(0, max(1, source.shape[0] - height)))
        left = int(rng.integers(0, max(1, source.shape[1] - width)))
        crop = np.ascontiguousarray(source[top : top + height, left : left + width])
        np.testing.assert_array_equal(
            emulate_kernel(crop, reference), reference.frame(crop), err_msg=f"crop {crop.shape}"
        )


def test_kernel_source_declares_both_entries_with_prepared_argument_order() -> None:
    entry = re.search(r"#define OKCELL_PREPROCESS_ENTRY\(NAME, T\)(.*?)\{", KERNEL_SOURCE, re.S)
    assert entry is not None
    params = [p.strip() for p in entry.group(1).replace("\\", " ").split("(", 1)[1].rsplit(")", 1)[0].split(",")]
    formats = {"const unsigned char*": "P", "T*": "P", "int": "i", "double": "d", "float": "f"}
    assert "".join(formats[p.rsplit(" ", 1)[0]] for p in params) == PREPARED_ARGS
    for name in gpu_preprocess.KERNEL_NAMES.values():
        assert f"OKCELL_PREPROCESS_ENTRY({name}," in KERNEL_SOURCE


def test_kernel_args_match_opencv_scale_and_sidecar_normalisation() -> None:
    reference = Preprocessor(sidecar_for(224, 448, "BGR"))
    args = kernel_args(reference, (1944, 2592, 3), 2592 * 3)
    assert (args.dst_h, args.dst_w, args.channels, args.bgr_input) == (224, 448, 3, 1)
    assert args.scale_x == 1.0 / (448 / 2592) and args.scale_y == 1.0 / (224 / 1944)
    assert args.mean == tuple(float(v) for v in reference.mean)
    assert args.grid() == (14, 28, 1)


def test_check_frame_rejects_what_the_cpu_path_rejects() -> None:
    assert check_frame(np.zeros((4, 4), np.uint8)) == 1
    assert check_frame(np.zeros((4, 4, 3), np.uint8)) == 3
    with pytest.raises(ValueError, match="uint8"):
        check_frame(np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ValueError, match=r"\(H, W\) mono or \(H, W, 3\) RGB"):
        check_frame(np.zeros((4, 4, 4), np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_real_kernel_matches_cpu_reference(dtype: type) -> None:
    require_cuda_device("real-kernel check")
    import pycuda.driver as cuda

    context = cuda.Device(0).retain_primary_context()
    context.push()
    try:
        frames = [photo("astronaut"), photo("camera"), photo("hubble_deep_field")[100:700, 50:950], photo("text")]
        prep = gpu_preprocess.GpuPreprocessor(sidecar_for(224, 224), dtype, max_batch=len(frames))
        stream = cuda.Stream()
        device = cuda.mem_alloc(prep.sample_bytes * len(frames))
        host = cuda.pagelocked_empty((len(frames), 3, 224, 224), dtype)
        prep.run(frames, int(device), stream)
        cuda.memcpy_dtoh_async(host, device, stream)
        stream.synchronize()
        expected = prep.reference.batch(frames)
        assert float(np.abs(host.astype(np.float32) - expected).max()) <= 1e-3
        prep.close()
        device.free()
    finally:
        context.pop()
