"""Edge-aware refinement of label score maps with the image as guide (colour guided filter).

Attention maps live on a grid 2-16x coarser than the image, so thresholded masks come out
blobby and a pixel or two off at every boundary. The guided filter (He, Sun & Tang, TPAMI
2013) fits, in every window, the scores as a linear function of the image's colour, so
upsampled scores snap to the image's own edges while staying smooth where the image is flat.
It is what DiffuMask gets from a dense CRF, at the cost of a few box filters.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
