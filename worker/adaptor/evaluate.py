"""Box AP / AP50 with pycocotools' COCOeval (class-aware, or class-agnostic)."""
from __future__ import annotations

import contextlib
import copy
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def coco_from_dict(doc: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(doc)
    coco.dataset.setdefault("info", {})
    coco.dataset.setdefault("licenses", [])
    for i, a in enumerate(coco.dataset.get("annotations", []), start=1):
        a.setdefault("id", i)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def box_ap(gt: dict, detections: list[dict], class_agnostic: bool = False) -> dict[str, float]:
    """`gt`: a COCO instances document; `detections`: [{image_id, category_id, bbox xywh, score}].

    Only the images listed in `gt` count. Returns {"AP", "AP50", "AP75", "n_images", "n_detections"}.
    """
    coco_gt = coco_from_dict(gt)
    out = {"n_images": len(coco_gt.getImgIds()), "n_detections": len(detections)}
    if not detections or not coco_gt.getAnnIds():
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, **out}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.useCats = 0 if class_agnostic else 1
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"AP": round(float(max(s[0], 0.0)), 4), "AP50": round(float(max(s[1], 0.0)), 4),
            "AP75": round(float(max(s[2], 0.0)), 4), **out}


def detections_to_coco(image_id: int, dets, category_ids: list[int], scale: tuple[float, float] = (1.0, 1.0)) -> list[dict]:
    """Detections (xyxy) of one image -> COCO result dicts; `scale` = (sx, sy) to the GT size."""
    sx, sy = scale
    out = []
    for box, score, label in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist()):
        x0, y0, x1, y1 = box
        out.append({"image_id": int(image_id), "category_id": int(category_ids[label]),
                    "bbox": [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy], "score": float(score)})
    return out
