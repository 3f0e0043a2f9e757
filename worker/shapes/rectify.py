"""Rectified cross-attention for *training* the shapes model (FreestyleNet's layout training).

On a share of the training samples, each object's words (its colour and shape word, and the
class names after ";") may attend only inside that object's mask: their cross-attention logits
are masked out elsewhere, nearest-resized to each layer's resolution. The start token and
function words attend everywhere, so no row is ever fully masked. The model so learns to draw
an object where its words are allowed to look, which is what `method: mask2image` (backend
`rectified`, `worker.engine.controls.RectifiedCrossAttention`) asks of it at inference.

`TokenRegions` is an attention control of the engine's protocol (`worker.engine.attention`):
installed with `control_attention`, it is a pure logit mask on the engine's controlled
processor, so training and inference share one implementation of attention. Unlike the
inference control (a region per class id), a token's region here is any mask: an object's
instance, or the union of a class's instances for the words after ";".
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from worker.engine.attention import AttentionControl, Call, Site


class TokenRegions(AttentionControl):
    """This step's token regions per sample; each map size's boolean mask is built once a step."""

    def __init__(self) -> None:
        self._targets: list[list[tuple[int, np.ndarray]]] | None = None
        self._tokens = 0
        self._device = torch.device("cpu")
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def set(self, targets: list[list[tuple[int, np.ndarray]]] | None, n_tokens: int,
            device: torch.device | str = "cpu") -> None:
        """`targets[b]` = [(token index, boolean HxW mask), ...]; an empty list leaves sample b free."""
        self._targets = targets if targets and any(targets) else None
        self._tokens = n_tokens
        self._device = torch.device(device)
        self._cache.clear()

    def wants(self, site: Site) -> bool:
        return site.kind == "cross"  # attn2, and attn1 of only-cross blocks

    def active(self) -> bool:
        return self._targets is not None

    def allowed(self, site: Site) -> torch.Tensor:
        """[B, 1, h*w, T] bool: may query pixel q attend to token t."""
        mask = self._cache.get(site.hw)
        if mask is None:
            mask = torch.ones(len(self._targets), site.hw[0] * site.hw[1], self._tokens, dtype=torch.bool)
            for b, tokens in enumerate(self._targets):
                for k, region in tokens:
                    small = F.interpolate(torch.from_numpy(region.astype(np.float32))[None, None], size=site.hw,
                                          mode="nearest")
                    mask[b, :, k] = small.flatten() > 0.5
            mask = self._cache[site.hw] = mask[:, None].to(self._device)
        return mask

    def logits(self, site: Site, call: Call) -> torch.Tensor:
        return self.allowed(site)[call.samples]
