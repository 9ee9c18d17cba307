"""Patch tokens of every stored block for the accuracy-methods benchmark, extracted once per input layout.

A benchmark helper, not part of okcell: it runs the embedded DINOv2 in PyTorch (``output_hidden_states=True`` gives
all blocks in one pass) on frames prepared by okcell's own code (:mod:`okcell.sizing` layouts and the runtime
:class:`~okcell.preprocess.Preprocessor`), applies the final LayerNorm like the exported graph, L2-normalises each
block's patch tokens and caches them as float16 ``.npz`` chunks under ``.cache/accuracy/`` (git-ignored), so the
scoring variants in ``accuracy_methods.py`` run in numpy without touching the model again.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from okcell.images import read_image
from okcell.preprocess import Preprocessor
from okcell.sidecar import ModelSidecar

BLOCKS = (6, 8, 9, 10, 11, 12)
CHUNK = 8
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "accuracy"


def model_sidecar(size: tuple[int, int]) -> ModelSidecar:
    """A sidecar for the Preprocessor at ``size`` (only input size, mean, std and colour order are read)."""
    return ModelSidecar(onnx_file="", onnx_sha256="", input_size=size, patch_size=14, feature_dim=384,
                        embedding_dim=384, layers=(12,), layer_fusion="concat", dynamic_batch=False, opset=18,
                        model_source={})


@dataclass(frozen=True)
class Extraction:
    """One input layout: how an image becomes model frames (``frames``), the model size, a cache name."""

    name: str
    model_size: tuple[int, int]
    frames: Callable[[np.ndarray], list[np.ndarray]]


class TokenExtractor:
    """The embedded DINOv2 in PyTorch; ``tokens(frames)`` -> (F, len(BLOCKS), N, C) float16."""

    def __init__(self, threads: int = 2) -> None:
        import torch

        from export.sources import load_backbone

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = load_backbone("embedded").model.eval()
        self.skip = 1 + int(getattr(self.model.config, "num_register_tokens", 0))

    def tokens(self, frames: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
        torch = self.torch
        batch = torch.from_numpy(Preprocessor(model_sidecar(size)).batch(frames))
        with torch.inference_mode():
            hidden = self.model(pixel_values=batch, output_hidden_states=True).hidden_states
            per_block = [torch.nn.functional.normalize(self.model.layernorm(hidden[b])[:, self.skip:], dim=-1) for b in BLOCKS]
        return torch.stack(per_block, dim=1).numpy().astype(np.float16)


def chunk_path(folder: Path, split: str, index: int) -> Path:
    return folder / f"{split}-{index:03d}.npz"


def extract_split(extractor: TokenExtractor, extraction: Extraction, folder: Path, split: str, paths: list[Path],
                  transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
    """Cache the tokens of ``paths`` (each optionally transformed first) chunk by chunk; existing chunks are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for index, start in enumerate(range(0, len(paths), CHUNK)):
        target = chunk_path(folder, split, index)
        if target.exists():
            continue
        arrays: dict[str, Any] = {}
        for number, path in enumerate(paths[start:start + CHUNK]):
            image = read_image(path)
            if transform is not None:
                image = np.ascontiguousarray(transform(image))
            arrays[f"img{number}"] = extractor.tokens(extraction.frames(image), extraction.model_size)
        arrays["names"] = np.array([p.name for p in paths[start:start + CHUNK]])
        partial = target.with_suffix(".partial.npz")
        np.savez(partial, **arrays)
        partial.rename(target)
        done = min(start + CHUNK, len(paths))
        print(f"  {folder.name}/{split}: {done}/{len(paths)} images, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def load_split(folder: Path, split: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (F, blocks, N, C) float16 tokens) per image of a cached split, in order."""
    index = 0
    while chunk_path(folder, split, index).exists():
        with np.load(chunk_path(folder, split, index)) as data:
            for number, name in enumerate(data["names"]):
                yield str(name), data[f"img{number}"]
        index += 1
