"""How patch tokens of several blocks become one feature per patch (shared by the exported graph and the parity check)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fuse_patch_tokens(normed_layers: list[torch.Tensor], fusion: str) -> torch.Tensor:
    """Per-layer L2-normalised patch tokens, concatenated or averaged along channels, then L2-normalised."""
    per_layer = [F.normalize(tokens, dim=-1) for tokens in normed_layers]
    fused = torch.cat(per_layer, dim=-1) if fusion == "concat" else torch.stack(per_layer).mean(dim=0)
    return F.normalize(fused, dim=-1)
