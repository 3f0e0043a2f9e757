"""From averaged attention maps to per-class score maps and a semantic label map (torch).

Dataset Diffusion (Nguyen et al. 2023): class cross-attention maps (16x16, upsampled bicubic to
the 32x32 self-attention grid) are propagated by the self-attention matrix, `M_c = S^tau A_c`,
min-max normalised per class, upsampled to the image and arg-maxed; scores in
[uncertain_threshold, class_threshold) become 255 (ignore). DAAM-style mode thresholds the
normalised cross maps directly.

Edge snapping (`guided_filter`): attention maps live on a grid 2-16x coarser than the image, so
thresholded masks come out blobby and a pixel or two off at every boundary. The guided filter
(He, Sun & Tang, TPAMI 2013) fits, in every window, the scores as a linear function of the
image's colour, so upsampled scores snap to the image's own edges while staying smooth where the
image is flat. It is what DiffuMask gets from a dense CRF, at the cost of a few box filters.

All functions work on one image; shapes are documented as [classes, ...].
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from shared.formats.records import IGNORE

BACKGROUND = 0


def token_group_maps(cross: torch.Tensor, token_groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """[h*w, T] cross-attention -> [C, h*w]: per class, the mean over its token indexes.

    A class with no tokens (e.g. cut off by the tokenizer's length limit) gets a zero map, so
    it never wins a pixel.
    """
    n_tokens = cross.shape[-1]
    maps = []
    for group in token_groups:
        bad = [t for t in group if not 0 <= t < n_tokens]
        if bad:
            raise ValueError(f"token indexes {bad} out of range for {n_tokens} tokens")
        if group:
            maps.append(cross[:, list(group)].mean(dim=-1))
        else:
            maps.append(cross.new_zeros(cross.shape[0]))
    return torch.stack(maps) if maps else cross.new_zeros(0, cross.shape[0])


def class_cross_maps(
    cross_maps: Sequence[tuple[torch.Tensor, tuple[int, int]]],
    token_groups: Sequence[Sequence[int]],
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """Per-class cross maps averaged over resolutions, on the `out_hw` grid: [C, H, W].

    `cross_maps`: ([h*w, T] map, (h, w)) per resolution. Each is resized bicubic to `out_hw`
    (Dataset Diffusion: 16 -> 32) and the resolutions are averaged. Bicubic overshoots a
    little below zero at sharp edges; attention is non-negative, so we clamp at 0.
    """
    if not cross_maps:
        raise ValueError("class_cross_maps: no cross-attention maps given")
    total = None
    for cross, (h, w) in cross_maps:
        per_class = token_group_maps(cross.float(), token_groups).reshape(-1, 1, h, w)
        if (h, w) != tuple(out_hw):
            per_class = F.interpolate(per_class, size=tuple(out_hw), mode="bicubic", align_corners=False)
        total = per_class if total is None else total + per_class
    return (total / len(cross_maps)).squeeze(1).clamp_min(0.0)


def propagate(self_attn: torch.Tensor, maps: torch.Tensor, tau: int) -> torch.Tensor:
    """M_c = S^tau A_c for every class: [N, N] x [C, N] -> [C, N].

    S is applied tau times to the [N, C] block instead of forming S^tau (C << N, so this is
    tau * N^2 * C work rather than log(tau) * N^3).
    """
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    n = self_attn.shape[0]
    if self_attn.shape != (n, n) or maps.shape[-1] != n:
        raise ValueError(f"propagate: S {tuple(self_attn.shape)} does not match maps {tuple(maps.shape)}")
    s = self_attn.float()
    out = maps.float().T  # [N, C]
    for _ in range(tau):
        out = s @ out
    return out.T.contiguous()


def minmax_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per-class (first dim) min-max normalisation to [0, 1]; a constant map becomes 0."""
    flat = maps.reshape(maps.shape[0], -1).float()
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def upsample(maps: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """[C, h, w] -> [C, H, W], bilinear (stays inside [min, max] of the input)."""
    if tuple(maps.shape[-2:]) == tuple(image_hw):
        return maps
    return F.interpolate(maps[None].float(), size=tuple(image_hw), mode="bilinear", align_corners=False)[0]


def _check_ids(class_ids: Sequence[int], n: int) -> torch.Tensor:
    if len(class_ids) != n:
        raise ValueError(f"{len(class_ids)} class ids for {n} score maps")
    if any(not 1 <= c <= 254 for c in class_ids):
        raise ValueError("class ids must be in 1..254 (0 is background, 255 ignore)")
    return torch.tensor(list(class_ids), dtype=torch.long)


def label_with_ignore_band(
    scores: torch.Tensor,
    class_ids: Sequence[int],
    class_threshold: float,
    uncertain_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[C, H, W] scores -> (semantic uint8 [H, W], best score [H, W]).

    best >= class_threshold -> argmax class id; uncertain_threshold <= best < class_threshold
    -> 255; below -> 0 (background).
    """
    ids = _check_ids(class_ids, scores.shape[0]).to(scores.device)
    best, idx = scores.max(dim=0)
    semantic = torch.full_like(idx, BACKGROUND)
    semantic = torch.where(best >= uncertain_threshold, torch.full_like(idx, IGNORE), semantic)
    semantic = torch.where(best >= class_threshold, ids[idx], semantic)
    return semantic.to(torch.uint8), best


def label_by_threshold(
    scores: torch.Tensor, class_ids: Sequence[int], threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DAAM-style: a pixel takes the class whose normalised map is highest among those
    >= threshold (equivalently: argmax when the max passes); else background. No ignore band."""
    ids = _check_ids(class_ids, scores.shape[0]).to(scores.device)
    best, idx = scores.max(dim=0)
    semantic = torch.where(best >= threshold, ids[idx], torch.full_like(idx, BACKGROUND))
    return semantic.to(torch.uint8), best


def refined_scores(
    class_maps: torch.Tensor, self_attn: torch.Tensor, tau: int, image_hw: tuple[int, int]
) -> torch.Tensor:
    """Dataset Diffusion scores: [C, h, w] class maps on the self-attention grid -> [C, H, W]."""
    c, h, w = class_maps.shape
    refined = propagate(self_attn, class_maps.reshape(c, h * w), tau).reshape(c, h, w)
    return upsample(minmax_normalise(refined), image_hw)


def daam_scores(class_maps: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """DAAM-style scores: normalised class cross maps, upsampled: [C, H, W]."""
    return upsample(minmax_normalise(class_maps), image_hw)


def peak_attention(class_maps: torch.Tensor) -> list[float]:
    """Raw per-class maximum of the (unnormalised) cross map: a low peak means the model barely
    attended to the class word, i.e. the class is probably absent from the image."""
    if class_maps.shape[0] == 0:
        return []
    return class_maps.reshape(class_maps.shape[0], -1).max(dim=1).values.tolist()


# ------------------------------------------------------------------ edge snapping
def auto_radius(image_hw: tuple[int, int]) -> int:
    """Window radius: about 1/16 of the shorter side (2 px at 32 px, 32 px at 512 px)."""
    return max(1, round(min(image_hw) / 16))


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, edges averaged over the pixels that exist. x: [N, H, W]."""
    return F.avg_pool2d(x[:, None], 2 * r + 1, stride=1, padding=r, count_include_pad=False)[:, 0]


def guided_filter(scores: torch.Tensor, image: np.ndarray | torch.Tensor, radius: int, eps: float = 1e-3) -> torch.Tensor:
    """Filter `scores` [C, H, W] guided by `image` [H, W, 3] (uint8 or floats in [0, 1]).

    Returns [C, H, W] clipped to [0, 1]."""
    # torch.tensor copies: a PIL image's array view is read-only, and torch warns on those.
    guide = image.float() if isinstance(image, torch.Tensor) else torch.tensor(np.asarray(image), dtype=torch.float32)
    if guide.max() > 1.0:
        guide = guide / 255.0
    guide = guide.permute(2, 0, 1).contiguous()  # [3, H, W]
    p = scores.float()
    if guide.shape[1:] != p.shape[1:]:
        raise ValueError(f"guide {tuple(guide.shape[1:])} and scores {tuple(p.shape[1:])} differ in size")
    c, h, w = p.shape
    mean_i = _box(guide, radius)  # [3, H, W]
    mean_p = _box(p, radius)  # [C, H, W]
    corr_ip = _box((guide[:, None] * p[None]).reshape(3 * c, h, w), radius).reshape(3, c, h, w)
    cov_ip = corr_ip - mean_i[:, None] * mean_p[None]  # [3, C, H, W]
    ii = (guide[:, None] * guide[None]).reshape(9, h, w)
    var_i = (_box(ii, radius).reshape(3, 3, h, w) - mean_i[:, None] * mean_i[None])  # [3, 3, H, W]
    sigma = var_i.permute(2, 3, 0, 1) + eps * torch.eye(3)  # [H, W, 3, 3]
    a = torch.linalg.solve(sigma, cov_ip.permute(2, 3, 0, 1))  # [H, W, 3, C]
    a = a.permute(2, 3, 0, 1)  # [3, C, H, W]
    b = mean_p - (a * mean_i[:, None]).sum(0)  # [C, H, W]
    mean_a = _box(a.reshape(3 * c, h, w), radius).reshape(3, c, h, w)
    mean_b = _box(b, radius)
    return ((mean_a * guide[:, None]).sum(0) + mean_b).clamp(0.0, 1.0)
