"""Attention localisation loss for training the shapes model (training only; not shipped).

The shapes world has exact masks, so training can ask each object's words to attend where
the object is (the idea of FastComposer's cross-attention localisation loss): for a supervised
token k with mask M_k, the share of its attention mass inside the mask,
`sum_x A[x, k] M_k(x) / sum_x A[x, k]`, is pushed up with `-log`. Tokens: the colour and shape
word of each object (its instance mask) and the class names after ";" (the union of that
class's instances). Captured at the cross-attention layers of the chosen resolutions by a
processor that computes the softmax explicitly (what the engine's capture does at inference);
every other layer keeps the stock SDPA processor.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from shared.shapes.render import Scene
from shared.shapes.world import split_words


class CrossProbsProcessor:
    """AttnProcessor2_0's math with an explicit softmax; keeps head-mean probs (with grad)."""

    def __init__(self, sink: list):
        self.sink = sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, _, _ = hidden_states.shape
        seq = encoder_hidden_states.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        hd = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, hd).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, hd).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, hd).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(-1, -2)) * (1.0 / math.sqrt(hd))
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = scores.softmax(-1)
        self.sink.append(probs.mean(1))  # [B, Q, T]
        out = torch.matmul(probs, value).transpose(1, 2).reshape(batch, -1, attn.heads * hd)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install(unet, resolutions: tuple[int, ...], image_size: int) -> list:
    """Swap in CrossProbsProcessor on cross-attention layers whose maps are in `resolutions`.

    Returns the list the processors append to (clear it before each forward)."""
    sink: list = []
    procs = {}
    for name, proc in unet.attn_processors.items():
        res = _resolution(name, unet, image_size)
        if name.endswith("attn2.processor") and res in resolutions:
            procs[name] = CrossProbsProcessor(sink)
        else:
            procs[name] = proc
    unet.set_attn_processor(procs)
    return sink


def _resolution(name: str, unet, image_size: int) -> int:
    n = len(unet.config.block_out_channels)
    if name.startswith("mid_block"):
        return image_size >> (n - 1)
    idx = int(name.split(".")[1])
    if name.startswith("down_blocks"):
        return image_size >> idx
    return image_size >> (n - 1 - idx)


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
