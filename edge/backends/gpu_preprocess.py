"""GPU preprocessing: uint8 frame -> normalised (3, H, W) fp32/fp16 tensor, one CUDA kernel per frame.

The kernel reproduces :class:`okcell.preprocess.Preprocessor` bit for bit: mono -> RGB, OpenCV's
``cv2.INTER_LINEAR`` resize of 8-bit images (half-pixel centres, 11-bit fixed-point weights rounded
half-to-even, horizontal pass in int32, vertical pass ``((b0*(h0>>4))>>16 + (b1*(h1>>4))>>16 + 2) >> 2``,
edge columns clamped with zero weight, edge rows clamped with their computed weights), RGB/BGR order,
``(v - mean*255) * (1/(std*255))`` in float32 and HWC -> CHW. Coordinates use explicitly rounded
double/float intrinsics (no FMA contraction) so they equal OpenCV's CPU arithmetic.

The same source compiles with nvcc (pycuda ``SourceModule(no_extern_c=True)``) and NVRTC (CuPy ``RawModule``).
pycuda is imported lazily: this module imports on machines without CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from okcell.sidecar import ModelSidecar
from okcell.preprocess import Preprocessor

if TYPE_CHECKING:
    import pycuda.driver as cuda

KERNEL_NAMES = {np.dtype(np.float32): "okcell_preprocess_f32", np.dtype(np.float16): "okcell_preprocess_f16"}
BLOCK = (32, 8, 1)

KERNEL_SOURCE = r"""
#include <cuda_fp16.h>

__device__ __forceinline__ void okcell_store(float* dst, int index, float value) { dst[index] = value; }
__device__ __forceinline__ void okcell_store(__half* dst, int index, float value) { dst[index] = __float2half_rn(value); }

/* OpenCV resize coordinate for INTER_LINEAR: fx = (float)((d + 0.5) * scale - 0.5), s = floor(fx), fx -= s. */
__device__ __forceinline__ int okcell_source_index(int d, double scale, float* frac)
{
    float f = __double2float_rn(__dadd_rn(__dmul_rn((double)d + 0.5, scale), -0.5));
    int s = (int)floorf(f);
    *frac = __fsub_rn(f, (float)s);
    return s;
}

/* saturate_cast<short>(w * INTER_RESIZE_COEF_SCALE): round half to even. */
__device__ __forceinline__ int okcell_fixed_weight(float w) { return __float2int_rn(__fmul_rn(w, 2048.0f)); }

template <typename T>
__device__ __forceinline__ void okcell_preprocess(
    const unsigned char* __restrict__ src, int src_h, int src_w, int src_pitch, int channels,
    T* __restrict__ dst, int dst_h, int dst_w, double scale_x, double scale_y,
    float mean0, float mean1, float mean2, float inv_std0, float inv_std1, float inv_std2, int bgr_input)
{
    const int dx = blockIdx.x * blockDim.x + threadIdx.x;
    const int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= dst_w || dy >= dst_h) return;

    float fx;
    int sx = okcell_source_index(dx, scale_x, &fx);
    if (sx < 0) { fx = 0.0f; sx = 0; }
    if (sx >= src_w - 1) { fx = 0.0f; sx = src_w - 1; }
    const int sx1 = min(sx + 1, src_w - 1);
    const int ax0 = okcell_fixed_weight(__fsub_rn(1.0f, fx));
    const int ax1 = okcell_fixed_weight(fx);

    float fy;
    const int sy = okcell_source_index(dy, scale_y, &fy);
    const int by0 = okcell_fixed_weight(__fsub_rn(1.0f, fy));
    const int by1 = okcell_fixed_weight(fy);
    const unsigned char* row0 = src + (size_t)min(max(sy, 0), src_h - 1) * src_pitch;
    const unsigned char* row1 = src + (size_t)min(max(sy + 1, 0), src_h - 1) * src_pitch;

    const float mean[3] = {mean0, mean1, mean2};
    const float inv_std[3] = {inv_std0, inv_std1, inv_std2};
    const int plane = dst_h * dst_w;
    const int pixel = dy * dst_w + dx;
    for (int c = 0; c < 3; ++c) {
        const int sc = channels == 1 ? 0 : (bgr_input ? 2 - c : c);
        const int h0 = row0[sx * channels + sc] * ax0 + row0[sx1 * channels + sc] * ax1;
        const int h1 = row1[sx * channels + sc] * ax0 + row1[sx1 * channels + sc] * ax1;
        int v = (((by0 * (h0 >> 4)) >> 16) + ((by1 * (h1 >> 4)) >> 16) + 2) >> 2;
        v = min(max(v, 0), 255);
        okcell_store(dst, c * plane + pixel, __fmul_rn(__fsub_rn((float)v, mean[c]), inv_std[c]));
    }
}

#define OKCELL_PREPROCESS_ENTRY(NAME, T)                                                                   \
extern "C" __global__ void NAME(                                                                         \
    const unsigned char* src, int src_h, int src_w, int src_pitch, int channels, T* dst, int dst_h,      \
    int dst_w, double scale_x, double scale_y, float mean0, float mean1, float mean2, float inv_std0,    \
    float inv_std1, float inv_std2, int bgr_input)                                                       \
{                                                                                                         \
    okcell_preprocess<T>(src, src_h, src_w, src_pitch, channels, dst, dst_h, dst_w, scale_x, scale_y,    \
                         mean0, mean1, mean2, inv_std0, inv_std1, inv_std2, bgr_input);                  \
}

OKCELL_PREPROCESS_ENTRY(okcell_preprocess_f32, float)
OKCELL_PREPROCESS_ENTRY(okcell_preprocess_f16, __half)
"""

# Argument formats for pycuda's prepared calls, in the kernel's parameter order.
PREPARED_ARGS = "PiiiiPiiddffffffi"


@dataclass(frozen=True)
class KernelArgs:
    """Scalar arguments of one kernel launch (everything except the two pointers)."""

    src_h: int
    src_w: int
    src_pitch: int
    channels: int
    dst_h: int
    dst_w: int
    scale_x: float
    scale_y: float
    mean: tuple[float, float, float]
    inv_std: tuple[float, float, float]
    bgr_input: int

    def grid(self) -> tuple[int, int, int]:
        return (-(-self.dst_w // BLOCK[0]), -(-self.dst_h // BLOCK[1]), 1)


def check_frame(image: np.ndarray) -> int:
    """Validate a frame like the CPU path does; returns its channel count (1 or 3)."""
    if image.dtype != np.uint8:
        raise ValueError(f"frame must be 8-bit (uint8), found {image.dtype}")
    if image.ndim == 2:
        return 1
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frame must be (H, W) mono or (H, W, 3) RGB, found shape {image.shape}")
    return 3


def kernel_args(reference: Preprocessor, src_shape: tuple[int, ...], src_pitch: int) -> KernelArgs:
    """Launch arguments for a frame of ``src_shape`` (H, W[, 3]) with rows ``src_pitch`` bytes apart.

    Scales are computed like OpenCV: ``1 / (dst / src)`` in double precision."""
    src_h, src_w = int(src_shape[0]), int(src_shape[1])
    mean = tuple(float(v) for v in reference.mean)
    inv_std = tuple(float(v) for v in reference.inv_std)
    return KernelArgs(
        src_h=src_h,
        src_w=src_w,
        src_pitch=src_pitch,
        channels=1 if len(src_shape) == 2 else int(src_shape[2]),
        dst_h=reference.height,
        dst_w=reference.width,
        scale_x=1.0 / (reference.width / src_w),
        scale_y=1.0 / (reference.height / src_h),
        mean=(mean[0], mean[1], mean[2]),
        inv_std=(inv_std[0], inv_std[1], inv_std[2]),
        bgr_input=int(reference.bgr_input),
    )


class _FrameSlot:
    """Page-locked host staging + device buffer for one frame of a batch; grows, never shrinks."""

    def __init__(self) -> None:
        self.capacity = 0
        self.host: np.ndarray | None = None
        self.device: cuda.DeviceAllocation | None = None

    def stage(self, image: np.ndarray) -> int:
        """Copy ``image`` (any strides) into the page-locked buffer; returns its row pitch in bytes."""
        import pycuda.driver as cuda

        if image.nbytes > self.capacity:
            self.free()
            self.host = cuda.pagelocked_empty(image.nbytes, np.uint8)
            self.device = cuda.mem_alloc(image.nbytes)
            self.capacity = image.nbytes
        assert self.host is not None
        np.copyto(self.host[: image.nbytes].reshape(image.shape), image)
        return image.shape[1] * (1 if image.ndim == 2 else image.shape[2])

    def upload(self, nbytes: int, stream: cuda.Stream) -> int:
        """Queue the copy of the staged bytes to the device; returns the device pointer."""
        import pycuda.driver as cuda

        assert self.host is not None and self.device is not None
        cuda.memcpy_htod_async(self.device, self.host[:nbytes], stream)
        return int(self.device)

    def free(self) -> None:
        if self.device is not None:
            self.device.free()
        self.host = None
        self.device = None
        self.capacity = 0


class GpuPreprocessor:
    """Runs the preprocessing kernel with pycuda into a device input tensor (B, 3, H, W).

    Needs a current CUDA context when constructed and called. Host/device frame buffers are allocated on the
    first frame of each batch slot (and again only if a larger frame arrives), never per frame."""

    def __init__(self, sidecar: ModelSidecar, dtype: np.dtype[Any] | type = np.float32, max_batch: int = 1) -> None:
        from pycuda.compiler import SourceModule

        self.reference = Preprocessor(sidecar)
        self.dtype = np.dtype(dtype)
        if self.dtype not in KERNEL_NAMES:
            raise ValueError(f"GPU preprocessing writes float32 or float16, not {self.dtype}")
        self.sample_bytes = 3 * self.reference.height * self.reference.width * self.dtype.itemsize
        self._module = SourceModule(KERNEL_SOURCE, no_extern_c=True)
        self._kernel = self._module.get_function(KERNEL_NAMES[self.dtype])
        self._kernel.prepare(PREPARED_ARGS)
        self._slots = [_FrameSlot() for _ in range(max_batch)]

    def stage(self, frames: Sequence[np.ndarray]) -> list[int]:
        """Check the frames and copy them into the page-locked staging buffers; returns their row pitches."""
        if len(frames) > len(self._slots):
            raise ValueError(f"{len(frames)} frames exceed the batch capacity {len(self._slots)}")
        for image in frames:
            check_frame(image)
        return [slot.stage(image) for image, slot in zip(frames, self._slots)]

    def run(self, frames: Sequence[np.ndarray], dst: int, stream: cuda.Stream) -> None:
        """Stage, then queue upload + kernel for each frame on ``stream``, writing sample i at
        ``dst + i * sample_bytes``. A captured CUDA graph replays the queued part after :meth:`stage`."""
        pitches = self.stage(frames)
        for index, (image, slot, pitch) in enumerate(zip(frames, self._slots, pitches)):
            src = slot.upload(image.nbytes, stream)
            args = kernel_args(self.reference, image.shape, pitch)
            self._kernel.prepared_async_call(
                args.grid(), BLOCK, stream,
                src, args.src_h, args.src_w, args.src_pitch, args.channels,
                dst + index * self.sample_bytes, args.dst_h, args.dst_w, args.scale_x, args.scale_y,
                *args.mean, *args.inv_std, args.bgr_input,
            )

    def close(self) -> None:
        for slot in self._slots:
            slot.free()
