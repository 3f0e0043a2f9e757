"""Attention controls that steer generation (the protocol is in `worker.engine.attention`).

`RectifiedCrossAttention` (FreestyleNet): each class token may only be attended from the
pixels of its class's region — its cross-attention logits are -inf elsewhere. Start, end,
padding and every non-class token stay unconstrained, so no row is ever fully masked. Only
the conditional branch is rectified (the unconditional prompt names no class). It is a pure
logit mask: the layers stay on fused SDPA with `attn_mask`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from worker.engine.attention import AttentionControl, Call, Site, regions_at


class RectifiedCrossAttention(AttentionControl):
    """Rectified cross-attention from label maps.

    labels: [B, H, W] integer maps (category ids; any size, nearest-resized per layer).
    class_tokens: per sample, (token index, category id) pairs — every sub-word token of a
        class's words, with the class it must stay inside.
    num_tokens: the text length (keys) of the cross-attention layers.
    resolutions: which cross-attention resolutions to rectify (None: all of them).
    step_window: the fractions of the denoising steps it acts in (default: all).
    """

    def __init__(
        self,
        labels: torch.Tensor,
        class_tokens: Sequence[Sequence[tuple[int, int]]],
        num_tokens: int,
        resolutions: Sequence[int] | None = None,
        step_window: tuple[float, float] = (0.0, 1.0),
    ):
        if labels.ndim != 3 or labels.shape[0] != len(class_tokens):
            raise ValueError(f"labels must be [B, H, W] with one entry of class_tokens per sample, got {tuple(labels.shape)}")
        for tokens in class_tokens:
            for t, _ in tokens:
                if not 0 < t < num_tokens:  # 0 is the start token: it must stay free
                    raise ValueError(f"class token index {t} outside 1..{num_tokens - 1}")
        self.labels = labels
        self.class_tokens = [list(t) for t in class_tokens]
        self.num_tokens = num_tokens
        self.resolutions = None if resolutions is None else frozenset(resolutions)
        self.step_window = step_window
        self._on = True
        self._masks: dict[tuple[int, int], torch.Tensor] = {}

    def begin_step(self, step: int, num_steps: int) -> None:
        self._on = self.step_window[0] <= step / num_steps < self.step_window[1]

    def active(self) -> bool:
        return self._on

    def wants(self, site: Site) -> bool:
        return site.kind == "cross" and (self.resolutions is None or site.resolution in self.resolutions)

    def allowed(self, site: Site) -> torch.Tensor:
        """[B, 1, h*w, T] bool: may query pixel q attend to token t (cached per map size)."""
        mask = self._masks.get(site.hw)
        if mask is None:
            regions = regions_at(site, self.labels)  # [B, Q]
            batch, queries = regions.shape
            mask = torch.ones(batch, queries, self.num_tokens, dtype=torch.bool, device=self.labels.device)
            for b, tokens in enumerate(self.class_tokens):
                for t, category in tokens:
                    mask[b, :, t] = regions[b] == category
            mask = self._masks[site.hw] = mask[:, None]
        return mask

    def logits(self, site: Site, call: Call) -> torch.Tensor:
        return self.allowed(site)[call.samples]
