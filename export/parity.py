"""Parity of an exported ONNX with the PyTorch model on real photos through okcell's real preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from okcell.preprocess import Preprocessor
from okcell.sidecar import ModelSidecar

MIN_PATCH_COSINE = 0.9999
PARITY_IMAGES = ("astronaut", "coffee", "brick", "gravel")  # scikit-image photos: colour + grey textures


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model."""


def parity_images() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 frame) for the scikit-image photos used to check an export."""
    from skimage import data

    return [(name, np.ascontiguousarray(getattr(data, name)())) for name in PARITY_IMAGES]


def reference_features(
    model: Any, pixel_values: np.ndarray, layers: tuple[int, ...], fusion: str
) -> tuple[np.ndarray, np.ndarray]:
    """Patch tokens + embedding from transformers' own forward (its own position-embedding interpolation)."""
    import torch

    from export.fusion import fuse_patch_tokens

    skip = 1 + int(getattr(model.config, "num_register_tokens", 0))
    with torch.no_grad():
        output = model(torch.from_numpy(pixel_values), output_hidden_states=True)
        normed = [model.layernorm(output.hidden_states[layer])[:, skip:] for layer in layers]
        patches = fuse_patch_tokens(normed, fusion)
        embedding = torch.nn.functional.normalize(output.pooler_output, dim=-1)
    return patches.numpy(), embedding.numpy()


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def check_parity(
    onnx_path: Path, model: Any, sidecar: ModelSidecar, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the ONNX in ONNX Runtime and the PyTorch model on the parity photos; raise ParityError if the minimum
    patch-token cosine is below MIN_PATCH_COSINE (or not finite). A dynamic-batch model runs all photos as one batch."""
    import onnxruntime as ort

    preprocessor = Preprocessor(sidecar)
    names, frames = zip(*parity_images())
    batch = preprocessor.batch(frames)
    chunks = [batch] if sidecar.dynamic_batch else [batch[i : i + 1] for i in range(len(batch))]
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        outputs = [session.run([sidecar.patch_output, sidecar.embedding_output], {sidecar.input_name: c}) for c in chunks]
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        raise ParityError(f"{onnx_path}: ONNX Runtime cannot run the exported graph ({exc}); nothing was written") from exc
    onnx_patches = np.concatenate([o[0] for o in outputs])
    onnx_embedding = np.concatenate([o[1] for o in outputs])
    expected_shape = (len(frames), sidecar.num_patches, sidecar.feature_dim)
    if onnx_patches.shape != expected_shape:
        raise ParityError(f"{onnx_path}: patch_tokens shape {onnx_patches.shape}, expected {expected_shape}")
    patch_cosines, embedding_cosines = [], []
    for index, name in enumerate(names):
        ref_patches, ref_embedding = reference_features(model, batch[index : index + 1], sidecar.layers, sidecar.layer_fusion)
        patch_cosines.append(float(np.min(_row_cosines(onnx_patches[index], ref_patches))))
        embedding_cosines.append(float(np.min(_row_cosines(onnx_embedding[index], ref_embedding))))
        max_abs = float(np.abs(onnx_patches[index] - ref_patches[0]).max())
        if progress:
            progress(f"parity {name}: min patch cosine {patch_cosines[-1]:.6f}, embedding cosine "
                     f"{embedding_cosines[-1]:.6f}, max abs {max_abs:.2e}")
    min_patch = float(np.min(patch_cosines))  # np.min keeps NaN, so a NaN output fails below
    if not min_patch >= MIN_PATCH_COSINE:
        raise ParityError(
            f"{onnx_path}: ONNX output differs from PyTorch: min patch-token cosine {min_patch:.6f} "
            f"< {MIN_PATCH_COSINE} — the export is broken; nothing was written"
        )
    figures = {
        "images": list(names), "min_patch_cosine": min_patch, "min_embedding_cosine": float(np.min(embedding_cosines))
    }
    return figures
