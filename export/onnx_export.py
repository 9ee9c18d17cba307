"""DINOv2 (transformers) -> ONNX graph ``pixel_values -> (patch_tokens, embedding)`` that TensorRT 10 can parse.

The position embeddings are interpolated once for the export size and stored as a constant, so the graph holds no
Resize/bicubic; layer selection, final LayerNorm, register/CLS removal, fusion and L2 normalisation are in-graph.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from export.fusion import fuse_patch_tokens
from okcell.progress import Progress
from okcell.sidecar import ModelSidecar, sidecar_path_for
from okcell.schema import ConfigError, sha256_file

if TYPE_CHECKING:
    from export.sources import LoadedBackbone

MIN_OPSET = 17
DEFAULT_OPSET = 18
DEFAULT_SIZE = 448
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB; leave room for the graph itself
FUSIONS = ("concat", "mean")
# the exporter's per-pass INFO lines and "torchvision is not installed" warnings; okcell prints its own progress
QUIET_LOGGERS = ("torch.onnx", "onnx_ir", "onnxscript")


@dataclass(frozen=True)
class ExportOptions:
    """What to export: input size (H, W), 1-based blocks to read patch tokens from, how to fuse them."""

    size: tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)
    layers: tuple[int, ...] = ()  # empty: default_layers() of the model
    fusion: str = "concat"
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET


def default_layers(num_layers: int) -> tuple[int, ...]:
    """The block at three quarters of the depth (block 9 of ViT-S/B's 12): local patch features. The last block mixes
    in global context, so a small defect shifts every patch token; on real parts (benchmarks/accuracy.md) block 12
    gave image AUROC 0.88 on MPDD plates where blocks 6 to 11 all gave 1.00."""
    return (max(1, round(0.75 * num_layers)),)


def check_options(options: ExportOptions, patch_size: int, num_layers: int) -> tuple[int, ...]:
    """Validate ``options`` against the model; returns the resolved layer list."""
    height, width = options.size
    if height <= 0 or width <= 0 or height % patch_size or width % patch_size:
        raise ConfigError(
            f"--size {height}x{width}: height and width must be positive multiples of the patch size {patch_size} "
            f"(e.g. {max(1, round(height / patch_size)) * patch_size})"
        )
    layers = options.layers or default_layers(num_layers)
    bad = [layer for layer in layers if not 1 <= layer <= num_layers]
    if bad or len(set(layers)) != len(layers):
        raise ConfigError(f"--layers {','.join(map(str, layers))}: need distinct block numbers in 1..{num_layers}")
    if options.fusion not in FUSIONS:
        raise ConfigError(f"--fusion {options.fusion!r}: expected one of {', '.join(FUSIONS)}")
    if options.opset < MIN_OPSET:
        raise ConfigError(f"--opset {options.opset}: need {MIN_OPSET} or newer (LayerNormalization)")
    return tuple(layers)


class FeatureGraph(nn.Module):
    """The exported computation, built from a transformers DINOv2 for one fixed input size."""

    position: torch.Tensor  # (1, 1 + rows * cols, C) position embeddings interpolated for this size

    def __init__(self, model: Any, size: tuple[int, int], layers: tuple[int, ...], fusion: str) -> None:
        super().__init__()
        embeddings = model.embeddings
        height, width = size
        patch = int(model.config.patch_size)
        grid_tokens = (height // patch) * (width // patch)
        with torch.no_grad():  # transformers' own interpolation, evaluated once for this size
            probe = torch.zeros(1, 1 + grid_tokens, int(model.config.hidden_size))
            position = embeddings.interpolate_pos_encoding(probe, height, width)
        self.register_buffer("position", position.detach().clone())
        self.projection = embeddings.patch_embeddings.projection
        self.cls_token = embeddings.cls_token
        self.register_tokens = getattr(embeddings, "register_tokens", None)
        self.blocks = model.encoder.layer
        self.norm = model.layernorm
        self.layers = set(layers)
        self.order = list(layers)
        self.fusion = fusion
        self.skip = 1 + (0 if self.register_tokens is None else int(self.register_tokens.shape[1]))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = pixel_values.shape[0]
        tokens = self.projection(pixel_values).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1) + self.position
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(batch, -1, -1)
            tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        taken: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks, start=1):
            output = block(tokens)
            tokens = output[0] if isinstance(output, tuple) else output  # transformers 4.x returns a tuple
            if index in self.layers:
                taken[index] = self.norm(tokens)[:, self.skip:]
        patch_tokens = fuse_patch_tokens([taken[index] for index in self.order], self.fusion)
        embedding = F.normalize(self.norm(tokens)[:, 0], dim=-1)
        return patch_tokens, embedding


def parameter_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def export_graph(graph: FeatureGraph, size: tuple[int, int], options: ExportOptions, onnx_path: Path) -> bool:
    """Trace ``graph`` to ``onnx_path`` (constants folded); returns whether weights went to external data.

    Opset 18+ uses torch's torch.export-based exporter; opset 17 (older consumers) the TorchScript exporter,
    since torch's op library starts at opset 18 and cannot down-convert this graph."""
    external = parameter_bytes(graph) > EXTERNAL_DATA_BYTES
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        return _trace(graph, size, options, onnx_path, external)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _trace(graph: FeatureGraph, size: tuple[int, int], options: ExportOptions, onnx_path: Path, external: bool) -> bool:
    inputs, outputs = ["pixel_values"], ["patch_tokens", "embedding"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", FutureWarning)  # torch.export internals
        if options.opset == MIN_OPSET:
            axes = {name: {0: "batch"} for name in ("pixel_values", "patch_tokens", "embedding")}
            torch.onnx.export(
                graph, (torch.zeros(1, 3, *size),), str(onnx_path), dynamo=False, opset_version=options.opset,
                dynamic_axes=axes if options.dynamic_batch else None, do_constant_folding=True, input_names=inputs,
                output_names=outputs,
            )
            if external:
                _gather_external_data(onnx_path)
            return external
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.onnx.export(
            graph, (torch.zeros(2 if options.dynamic_batch else 1, 3, *size),), dynamo=True,
            opset_version=options.opset, dynamic_shapes={"pixel_values": {0: batch}} if options.dynamic_batch else None,
            optimize=True, external_data=external, verbose=False, input_names=inputs, output_names=outputs,
        )
    assert program is not None
    program.save(str(onnx_path), external_data=external)
    return external


def _gather_external_data(onnx_path: Path) -> None:
    """Store all weights in one ``NAME.onnx.data`` beside the graph (the TorchScript exporter writes a file per
    tensor past 2 GiB, and none below)."""
    import onnx

    model = onnx.load(str(onnx_path))
    for produced in onnx_path.parent.iterdir():
        if produced != onnx_path:
            produced.unlink()
    onnx.save_model(model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=onnx_path.name + ".data", size_threshold=0)


def check_graph(onnx_path: Path, options: ExportOptions) -> dict[str, Any]:
    """Structural checks for TensorRT: opset, no Resize, static spatial dims, named inputs/outputs."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    problems = []
    if "Resize" in ops:
        problems.append("a Resize node remains (position embeddings not precomputed)")
    if [i.name for i in model.graph.input] != ["pixel_values"]:
        problems.append(f"inputs {[i.name for i in model.graph.input]}, expected ['pixel_values']")
    if [o.name for o in model.graph.output] != ["patch_tokens", "embedding"]:
        problems.append(f"outputs {[o.name for o in model.graph.output]}, expected ['patch_tokens', 'embedding']")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if [d.dim_value for d in dims[1:]] != [3, *options.size]:
        problems.append(f"input dims {[d.dim_value or d.dim_param for d in dims]} are not (B, 3, {options.size})")
    if problems:
        raise RuntimeError(f"{onnx_path}: exported graph is not deployable: " + "; ".join(problems))
    return {"opset": opset, "nodes": len(model.graph.node), "op_types": sorted(ops)}


def remove_quietly(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def export_model(source: "str | Path | LoadedBackbone", options: ExportOptions, out: Path) -> ModelSidecar:
    """Export ``source`` to ``out`` (+ sidecar ``out.with_suffix('.json')``). Files only appear once the graph checks
    and the parity check (ParityError) passed; an existing model at ``out`` is kept untouched on failure."""
    from export.parity import check_parity
    from export.sources import LoadedBackbone, load_backbone

    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"--out {out}: expected a path ending in .onnx")
    with Progress("okcell export") as log:
        if isinstance(source, LoadedBackbone):
            backbone = source
        else:
            log.note(f"loading model source {source}")
            backbone = load_backbone(source)
        config = backbone.model.config
        layers = check_options(options, int(config.patch_size), int(config.num_hidden_layers))
        hidden = int(config.hidden_size)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.export-tmp"
        remove_quietly(staging)
        staging.mkdir()
        try:
            staged = staging / out.name
            log.note(f"tracing {options.size[0]}x{options.size[1]}, layers {list(layers)} ({options.fusion}), "
                     f"opset {options.opset}, {'dynamic' if options.dynamic_batch else 'batch 1'}")
            graph = FeatureGraph(backbone.model, options.size, layers, options.fusion).eval()
            external = export_graph(graph, options.size, options, staged)
            graph_info = check_graph(staged, options)
            log.note(f"graph: opset {graph_info['opset']}, {graph_info['nodes']} nodes, no Resize")
            sidecar = ModelSidecar(
                onnx_file=out.name, onnx_sha256="", input_size=options.size, patch_size=int(config.patch_size),
                feature_dim=hidden * len(layers) if options.fusion == "concat" else hidden, embedding_dim=hidden,
                layers=layers, layer_fusion=options.fusion, dynamic_batch=options.dynamic_batch, opset=graph_info["opset"],
                model_source=backbone.source_info,
            )
            log.note("checking parity with PyTorch on scikit-image photos")
            extra: dict[str, Any] = {
                "external_data": external, "op_types": graph_info["op_types"],
                "parity": check_parity(staged, backbone.model, sidecar, log.note),
            }
            data_files = sorted(p for p in staging.iterdir() if p.name != out.name)
            if data_files:  # weights beside the graph (> 2 GiB models): record their hashes too
                extra["external_data_files"] = {p.name: sha256_file(p) for p in data_files}
            sidecar = replace(sidecar, onnx_sha256=sha256_file(staged), extra=extra)
            for produced in sorted(staging.iterdir(), key=lambda p: p.name == out.name):  # the .onnx last
                os.replace(produced, out.parent / produced.name)
            sidecar_tmp = staging / "sidecar.json"
            sidecar.save(sidecar_tmp)
            os.replace(sidecar_tmp, sidecar_path_for(out))
        finally:
            remove_quietly(staging)
        log.note(f"wrote {out} and {sidecar_path_for(out).name} (sha256 {sidecar.onnx_sha256[:12]}…)")
    return sidecar
