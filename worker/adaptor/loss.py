"""CenterNet targets and losses for the adaptor head.

Each box has a centre cell on the output grid; the heatmap target is a Gaussian around it
(sigma from the box size, as in TTFNet), trained with the penalty-reduced focal loss; at the
centre cell the head regresses the sub-cell offset and log(w), log(h) in cells (L1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

GAUSS_ALPHA = 0.54
BOX_WEIGHT = 1.0


@dataclass
class Targets:
    heat: torch.Tensor  # [B, K, H, W] in [0, 1], 1 at centres
    box: torch.Tensor  # [B, 4, H, W]: dx, dy, log w, log h (cells), valid where mask
    mask: torch.Tensor  # [B, H, W] bool: centre cells
    num_objects: int


def make_targets(
    boxes: list[torch.Tensor], labels: list[torch.Tensor], num_outputs: int, grid_hw: tuple[int, int], out_stride: int
) -> Targets:
    """`boxes[i]`: [N, 4] xywh pixels of image i; `labels[i]`: [N] 0-based class indexes."""
    b = len(boxes)
    h, w = grid_hw
    heat = torch.zeros(b, num_outputs, h, w)
    box = torch.zeros(b, 4, h, w)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    n = 0
    for i, (bx, lb) in enumerate(zip(boxes, labels)):
        # Larger boxes first, so a small box whose centre falls in the same cell wins it.
        for j in torch.argsort(bx[:, 2] * bx[:, 3], descending=True).tolist():
            x, y, bw, bh = (float(v) / out_stride for v in bx[j])
            if bw <= 0 or bh <= 0:
                continue
            cx, cy = x + bw / 2, y + bh / 2
            ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
            sx, sy = max(GAUSS_ALPHA * bw / 6, 0.5), max(GAUSS_ALPHA * bh / 6, 0.5)
            g = torch.exp(-((xs - ix) ** 2) / (2 * sx**2) - ((ys - iy) ** 2) / (2 * sy**2))
            k = int(lb[j])
            heat[i, k] = torch.maximum(heat[i, k], g)
            heat[i, k, iy, ix] = 1.0
            box[i, :, iy, ix] = torch.tensor([cx - ix, cy - iy, torch.log(torch.tensor(bw)), torch.log(torch.tensor(bh))])
            mask[i, iy, ix] = True
            n += 1
    return Targets(heat, box, mask, n)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed (divide by the object count)."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = -torch.log(1 - p) * p**alpha * (1 - target) ** beta * (1 - pos)
    return pos_loss.sum() + neg_loss.sum()


def detection_loss(heat_logits: torch.Tensor, box_pred: torch.Tensor, t: Targets) -> tuple[torch.Tensor, dict[str, float]]:
    norm = max(t.num_objects, 1)
    heat = focal_loss(heat_logits, t.heat.to(heat_logits.device)) / norm
    m = t.mask.to(box_pred.device)
    if m.any():
        pred = box_pred.float().permute(0, 2, 3, 1)[m]
        tgt = t.box.to(box_pred.device).permute(0, 2, 3, 1)[m]
        reg = (pred - tgt).abs().sum() / norm
    else:
        reg = box_pred.sum() * 0.0
    total = heat + BOX_WEIGHT * reg
    return total, {"heat": float(heat.detach()), "box": float(reg.detach())}
