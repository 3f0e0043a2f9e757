"""Real labeled images for adaptor training: a COCO instances file + its image folder.

Each image gets a caption for its UNet pass, from (in order) the image entry's `caption`
field, the prompt of the dsgen record next to a dsgen COCO export
(`DIR/coco/annotations/instances_<split>.json` -> `DIR/samples/<stem>/record.json`), or a
class-name prompt built from its boxes ("a circle and a square").
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.formats import layout
from shared.formats.spec import SpecError


class DataError(SpecError):
    def __init__(self, message: str, field: str = "--coco"):
        super().__init__(message, field=field)


@dataclass
class CocoItem:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] xywh pixels, at the file's size
    labels: np.ndarray  # [N] 0-based class indexes
    caption: str
    caption_source: str  # "field" | "record" | "classes"


@dataclass
class CocoSet:
    items: list[CocoItem]
    classes: list[str]  # in category-id order
    raw: dict  # the COCO document (for COCOeval ground truth)


def class_prompt(names: list[str]) -> str:
    names = list(dict.fromkeys(names))
    return " and ".join(f"a {n}" for n in names)


def _record_caption(coco_json: Path, file_name: str) -> str | None:
    root = coco_json.resolve().parents[2] if len(coco_json.resolve().parents) > 2 else None
    if root is None or not (root / layout.SAMPLES_DIR).is_dir():
        return None
    rec = root / layout.SAMPLES_DIR / Path(file_name).stem / layout.RECORD_FILE
    if not rec.is_file():
        return None
    return json.loads(rec.read_text()).get("prompt")


def load_coco(coco_json: str | Path, images: str | Path, classes: list[str] | None = None,
              caption: str = "auto") -> CocoSet:
    """Read a COCO instances file. `classes`: map categories by name onto these (else the file's).

    `caption`: "auto" (field, then dsgen record, then class names) or "classes".
    """
    coco_json, images = Path(coco_json), Path(images)
    if not coco_json.is_file():
        raise DataError(f"--coco: file not found: {coco_json}")
    if not images.is_dir():
        raise DataError(f"--images: folder not found: {images}", field="--images")
    doc = json.loads(coco_json.read_text())
    cats = sorted(doc.get("categories", []), key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    classes = list(classes) if classes is not None else names
    index_of = {c["id"]: classes.index(c["name"]) for c in cats if c["name"] in classes}
    by_image: dict[int, list[dict]] = {}
    for a in doc.get("annotations", []):
        if a.get("iscrowd", 0) or a["category_id"] not in index_of:
            continue
        by_image.setdefault(a["image_id"], []).append(a)
    items = []
    for im in sorted(doc.get("images", []), key=lambda i: i["id"]):
        path = images / im["file_name"]
        if not path.is_file():
            raise DataError(f"--images: {im['file_name']} (image {im['id']}) is not in {images}", field="--images")
        anns = by_image.get(im["id"], [])
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        labels = np.array([index_of[a["category_id"]] for a in anns], dtype=np.int64)
        text, source = None, "classes"
        if caption == "auto":
            if im.get("caption"):
                text, source = im["caption"], "field"
            else:
                text = _record_caption(coco_json, im["file_name"])
                source = "record" if text else source
        if not text:
            text = class_prompt([classes[i] for i in labels])
        items.append(CocoItem(im["id"], path, im["width"], im["height"], boxes, labels, text, source))
    if not items:
        raise DataError(f"--coco: {coco_json} lists no images")
    return CocoSet(items, classes, doc)


def load_image(item: CocoItem, size_hw: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] in [-1, 1], resized to `size_hw`."""
    with Image.open(item.path) as im:
        im = im.convert("RGB")
        if im.size != (size_hw[1], size_hw[0]):
            im = im.resize((size_hw[1], size_hw[0]), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def scaled_boxes(item: CocoItem, size_hw: tuple[int, int]) -> np.ndarray:
    sx, sy = size_hw[1] / item.width, size_hw[0] / item.height
    return item.boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
