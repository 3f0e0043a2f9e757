"""Attention localisation loss for training the shapes model (training only; not shipped).

The shapes world has exact masks, so training can ask each object's words to attend where
the object is (the idea of FastComposer's cross-attention localisation loss): for a supervised
token k with mask M_k, the share of its attention mass inside the mask,
`sum_x A[x, k] M_k(x) / sum_x A[x, k]`, is pushed up with `-log`. Tokens: the colour and shape
word of each object (its instance mask) and the class names after ";" (the union of that
class's instances). Captured at the cross-attention layers of the chosen resolutions by the engine's own
controlled attention processor (`worker.engine.attention`: a `StepMapRecorder` keeps the
maps with their graph); every other layer keeps the stock SDPA processor.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from shared.shapes.render import Scene
from shared.shapes.world import split_words
from worker.engine.attention import Site, StepMapRecorder


class LocalisationMaps(StepMapRecorder):
    """The engine's step-map recorder on the text attention (`attn2`) of the supervised
    resolutions: head-mean probabilities with their graph, one [B, Q, T] tensor per layer call.
    (Under `only_cross_attention` a block's attn1 is a cross-attention layer too; the loss has
    only ever supervised attn2.)"""

    def wants(self, site: Site) -> bool:
        return super().wants(site) and site.name.endswith("attn2.processor")


def recorder(image_size: int) -> LocalisationMaps:
    """The control to install (with `worker.engine.attention.control_attention`) for the loss:
    the maps at half and full image size (a pixel-space model: the latent is the image)."""
    return LocalisationMaps(resolutions=(image_size // 2, image_size))


def token_targets(scene: Scene, caption: str, max_len: int) -> list[tuple[int, np.ndarray]]:
    """(token index, boolean mask) for each supervised word of `caption` (token 0 is <bos>)."""
    words = split_words(caption)
    out = []
    obj_iter = iter(scene.objects)
    i = 0
    suffix_at = words.index(";") if ";" in words else len(words)
    while i < suffix_at:
        if words[i] == "a" and i + 2 < suffix_at + 1:
            obj = next(obj_iter)
            m = scene.instance_mask(obj)
            out += [(i + 2, m), (i + 3, m)]  # colour, shape (+1 for <bos>)
            i += 3
        else:
            i += 1
    for j in range(suffix_at + 1, len(words)):
        from shared.shapes.world import SHAPES

        out.append((j + 1, scene.semantic == SHAPES.index(words[j]) + 1))
    return [(k, m) for k, m in out if k < max_len]


def localisation_loss(sink: list, targets: list[list[tuple[int, np.ndarray]]], device) -> torch.Tensor:
    """Mean over supervised (layer, image, token) of -log(share of attention inside the mask)."""
    if not any(targets):
        return torch.zeros((), device=device)
    losses = []
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for probs in sink:
        B, Q, T = probs.shape
        r = int(round(math.sqrt(Q)))
        if r not in cache:
            M = torch.zeros(B, T, r, r)
            W = torch.zeros(B, T)
            for b, tg in enumerate(targets):
                for k, m in tg:
                    mt = torch.from_numpy(m.astype(np.float32))[None, None]
                    M[b, k] = F.adaptive_avg_pool2d(mt, r)[0, 0]
                    W[b, k] = 1.0
            cache[r] = (M.flatten(2).to(device), W.to(device))
        M, W = cache[r]
        inside = torch.einsum("bqt,btq->bt", probs.float(), M)
        total = probs.float().sum(1) + 1e-8
        share = (inside / total).clamp_min(1e-6)
        losses.append(-(torch.log(share) * W).sum() / W.sum().clamp_min(1))
    return torch.stack(losses).mean()
