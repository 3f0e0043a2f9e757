"""The detection adaptor: UNet block features -> boxes (a CenterNet-style dense head).

Per stride level: normalise the concatenated block outputs (GroupNorm whose groups never
straddle two blocks, whose scales differ a lot) and map them to `width` channels (1x1 conv);
upsample every level to the finest one and sum (a light FPN); then a small conv tower and
two heads on that grid: a per-class centre heatmap and (x offset, y offset, log w, log h).
Boxes are read off the heatmap's local maxima (CenterNet, Zhou et al. 2019), filtered by
score and per-class NMS.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.features import BlockFeature, level_layout

FORMAT = "dsgen-adaptor/1"
HEAT_PRIOR = 0.01  # initial centre probability (focal-loss practice: background dominates)


@dataclass
class AdaptorConfig:
    """Everything needed to rebuild the adaptor and to check it fits a model and a run."""

    base_model: dict[str, str | None]  # {"id": ..., "revision": ...} of the frozen UNet
    blocks: list[dict[str, Any]]  # [{"name", "stride", "channels"}] of the UNet blocks read
    timestep: int  # the timestep real images were noised to in training
    classes: list[str]  # class names (category ids are positions + 1); one name if agnostic
    class_agnostic: bool = False
    pixel_stride: int = 1  # pixels per latent cell (the VAE factor; 1 in pixel space)
    feature_step: int = -1  # denoising step the features are read at (-1: the last)
    width: int = 64
    head_convs: int = 2
    image_size: list[int] = field(default_factory=list)  # [H, W] trained at (information)
    format: str = FORMAT
    training: dict[str, Any] = field(default_factory=dict)  # information: data, epochs, metrics

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AdaptorConfig":
        if data.get("format") != FORMAT:
            raise ValueError(f"not a dsgen adaptor config (format {data.get('format')!r}, expected {FORMAT!r})")
        return cls(**data)

    @property
    def block_features(self) -> list[BlockFeature]:
        return [BlockFeature(b["name"], int(b["stride"]), int(b["channels"])) for b in self.blocks]

    @property
    def num_outputs(self) -> int:
        return 1 if self.class_agnostic else len(self.classes)

    @property
    def out_stride(self) -> int:
        """Pixels per cell of the output grid."""
        return min(b["stride"] for b in self.blocks) * self.pixel_stride


def _group_size(channels: list[int]) -> int:
    return math.gcd(math.gcd(*channels), 16)


class DetectionAdaptor(nn.Module):
    def __init__(self, config: AdaptorConfig):
        super().__init__()
        self.config = config
        levels = level_layout(config.block_features)
        self.strides = sorted(levels)
        w = config.width
        self.mappers = nn.ModuleDict()
        for stride, group in levels.items():
            chans = [b.channels for b in group]
            total = sum(chans)
            self.mappers[str(stride)] = nn.Sequential(
                nn.GroupNorm(total // _group_size(chans), total),
                nn.Conv2d(total, w, 1),
                nn.GroupNorm(w // _group_size([w]), w),
                nn.SiLU(),
            )
        tower: list[nn.Module] = []
        for _ in range(config.head_convs):
            tower += [nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(w // _group_size([w]), w), nn.SiLU()]
        self.tower = nn.Sequential(*tower)
        self.heat = nn.Conv2d(w, config.num_outputs, 3, padding=1)
        self.box = nn.Conv2d(w, 4, 3, padding=1)
        nn.init.constant_(self.heat.bias, -math.log((1 - HEAT_PRIOR) / HEAT_PRIOR))
        nn.init.zeros_(self.box.weight)
        nn.init.zeros_(self.box.bias)

    def forward(self, levels: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """stride -> [B, C, h, w] features -> (centre logits [B, K, H, W], box [B, 4, H, W])."""
        missing = [s for s in self.strides if s not in levels]
        if missing:
            raise ValueError(f"features lack stride(s) {missing}; the adaptor reads {self.strides}")
        finest = levels[self.strides[0]]
        size = finest.shape[-2:]
        x = None
        for s in self.strides:
            y = self.mappers[str(s)](levels[s].float())
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            x = y if x is None else x + y
        x = self.tower(x)
        return self.heat(x), self.box(x)


@dataclass
class Detections:
    """Boxes of one image: xyxy pixels [N, 4], scores [N], class indexes [N] (0-based)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of xyxy boxes [N, 4] x [M, 4]."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float) -> torch.Tensor:
    """Indexes kept by greedy per-class NMS, by descending score."""
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    ious = box_iou(boxes[order], boxes[order])
    same = labels[order][:, None] == labels[order][None, :]
    keep: list[int] = []
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= (ious[i] > iou) & same[i]
    return order[torch.tensor(keep, dtype=torch.long)]


@torch.no_grad()
def decode(
    heat_logits: torch.Tensor,
    box: torch.Tensor,
    out_stride: int,
    image_hw: tuple[int, int],
    score_threshold: float,
    nms_iou: float,
    top_k: int = 100,
) -> list[Detections]:
    """Local maxima of the centre heatmap -> boxes in pixels, per image."""
    heat = torch.sigmoid(heat_logits.float())
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    b, k, h, w = heat.shape
    out = []
    for i in range(b):
        flat = peaks[i].reshape(-1)
        n = min(top_k, flat.numel())
        scores, idx = flat.topk(n)
        sel = scores > score_threshold
        scores, idx = scores[sel], idx[sel]
        labels = idx // (h * w)
        cell = idx % (h * w)
        ys, xs = (cell // w).float(), (cell % w).float()
        reg = box[i].float().reshape(4, -1)[:, cell]
        cx = (xs + reg[0]) * out_stride
        cy = (ys + reg[1]) * out_stride
        bw = reg[2].clamp(max=10).exp() * out_stride
        bh = reg[3].clamp(max=10).exp() * out_stride
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image_hw[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image_hw[0])
        keep = nms(boxes, scores, labels, nms_iou)
        out.append(Detections(boxes[keep], scores[keep], labels[keep]))
    return out
