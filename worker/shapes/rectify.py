"""Rectified cross-attention for *training* the shapes model (FreestyleNet's layout training).

On a share of the training samples, each object's words (its colour and shape word, and the
class names after ";") may attend only inside that object's mask: before the softmax their
cross-attention logits get a large negative bias outside the mask, nearest-resized to each
layer's resolution. The start token and function words attend everywhere, so no row is ever
fully masked. The model so learns to draw an object where its words are allowed to look,
which is what `method: mask2image` (backend `rectified`) asks of it at inference.

No attention maths here: the bias is *added to the attention mask* the stock processor (or
the localisation-loss processor) already receives, so softmax/SDPA stay theirs.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

NEG = -10000.0  # the same magnitude diffusers uses for masked-out text tokens


class RegionBias:
    """This step's token regions per sample; builds each resolution's additive bias once."""

    def __init__(self) -> None:
        self._targets: list[list[tuple[int, np.ndarray]]] | None = None
        self._tokens = 0
        self._cache: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def set(self, targets: list[list[tuple[int, np.ndarray]]] | None, n_tokens: int) -> None:
        """`targets[b]` = [(token index, boolean HxW mask), ...]; an empty list leaves sample b free."""
        self._targets = targets if targets and any(targets) else None
        self._tokens = n_tokens
        self._cache.clear()

    def bias(self, queries: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        if self._targets is None:
            return None
        key = (queries, device, dtype)
        if key not in self._cache:
            r = int(round(math.sqrt(queries)))
            out = torch.zeros(len(self._targets), r * r, self._tokens)
            for b, tg in enumerate(self._targets):
                for k, m in tg:
                    small = F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(r, r), mode="nearest")
                    out[b, :, k] = (1.0 - small.flatten()) * NEG
            self._cache[key] = out.to(device=device, dtype=dtype)
        return self._cache[key]


class RectifiedCrossAttention:
    """Wraps a cross-attention processor: adds the region bias to its attention mask."""

    def __init__(self, inner, regions: RegionBias) -> None:
        self.inner = inner
        self.regions = regions

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        q = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        bias = self.regions.bias(q, hidden_states.device, hidden_states.dtype)
        if bias is not None:
            # (B, 1, L) padding bias from the UNet + (B, Q, L) regions -> (B, Q, L); diffusers'
            # prepare_attention_mask repeats it per head.
            attention_mask = bias if attention_mask is None else attention_mask + bias
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def install(unet) -> RegionBias:
    """Wrap every cross-attention processor of `unet` (attn2, and attn1 of only-cross blocks)."""
    from diffusers.models.attention_processor import Attention

    cross = {f"{name}.processor" for name, mod in unet.named_modules()
             if isinstance(mod, Attention) and mod.is_cross_attention}
    regions = RegionBias()
    unet.set_attn_processor({name: RectifiedCrossAttention(proc, regions) if name in cross else proc
                             for name, proc in unet.attn_processors.items()})
    return regions
