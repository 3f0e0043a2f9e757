"""Adaptor boxes as sample annotations; `both`: matched to the attention instances.

No torch here beyond the detections' tensors read as lists, so the rules are easy to test:
- adaptor: one box-only annotation per box (source "adaptor", no mask);
- both: each adaptor box (by descending score) takes the unmatched attention instance of the
  same class with the highest IoU >= match_iou; the pair becomes one annotation with the
  attention mask and the adaptor's box and score (source "adaptor"); unmatched attention
  instances stay (source "attention"); unmatched adaptor boxes are added box-only, with
  instance ids after the attention ones (not present in the instance PNG).
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.formats.records import Annotation


@dataclass(frozen=True)
class Box:
    """One adaptor box in pixels (xyxy), its score and job category (None: class unknown)."""

    xyxy: tuple[float, float, float, float]
    score: float
    category_id: int | None
    category: str | None

    @property
    def xywh(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.xyxy
        return (round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2))


def iou_xywh(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def box_annotation(box: Box, instance_id: int) -> Annotation:
    x, y, w, h = box.xywh
    return Annotation(instance_id=instance_id, category=box.category, category_id=box.category_id, bbox=(x, y, w, h),
                      area=round(w * h, 2), score=round(box.score, 4), source="adaptor")


def adaptor_annotations(boxes: list[Box]) -> list[Annotation]:
    """Box-only annotations; boxes of unknown class are dropped (no class to give them)."""
    known = [b for b in boxes if b.category_id is not None]
    return [box_annotation(b, k) for k, b in enumerate(known, start=1)]


def match_boxes(attention: list[Annotation], boxes: list[Box], match_iou: float) -> tuple[list[Annotation], int]:
    """Merge attention instances and adaptor boxes (see module doc); returns (annotations, matched)."""
    taken: dict[int, Box] = {}
    extra: list[Box] = []
    for b in sorted(boxes, key=lambda b: -b.score):
        best, best_iou = None, match_iou
        for k, a in enumerate(attention):
            if k in taken or (b.category_id is not None and a.category_id != b.category_id):
                continue
            iou = iou_xywh(a.bbox, b.xywh)
            if iou >= best_iou:
                best, best_iou = k, iou
        if best is None:
            extra.append(b)
        else:
            taken[best] = b
    out = []
    for k, a in enumerate(attention):
        b = taken.get(k)
        out.append(a if b is None else a.model_copy(update={"bbox": b.xywh, "score": round(b.score, 4), "source": "adaptor"}))
    next_id = max((a.instance_id for a in attention), default=0) + 1
    for b in extra:
        if b.category_id is None:
            continue
        out.append(box_annotation(b, next_id))
        next_id += 1
    return out, len(taken)
