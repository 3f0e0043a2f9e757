"""YOLO (Ultralytics layout) export: one dataset root per task.

    yolo/detect/data.yaml   yolo/detect/images/<split>/<stem>.png   yolo/detect/labels/<split>/<stem>.txt
    yolo/segment/data.yaml  yolo/segment/images/<split>/<stem>.png  yolo/segment/labels/<split>/<stem>.txt

Why two roots: Ultralytics finds a label by replacing `/images/` with `/labels/` in the
image path, so the detection and segmentation labels of one image cannot live in one
tree. `data.yaml` has no `path:` key on purpose: Ultralytics then resolves `train:` etc.
against the yaml's own folder, so the dataset can be moved (a relative `path:` would be
resolved against the Ultralytics datasets dir instead).

Lines: `cls cx cy w h` (detect) and `cls x1 y1 x2 y2 ...` (segment, >= 3 points), class
0-based, coordinates normalised to [0, 1]. Every image has a label file, empty when it
has no object, so "no objects" is explicit rather than "label missing".

Segment: YOLO takes one polygon per object line. An instance with several polygons
(a mask split by an occluder) is written as its largest polygon by area; the smaller
parts are dropped. An instance without polygons but with an RLE gets the outer contours
of its mask (cv2); a box-only instance has no mask and is left out of `segment`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml
from pycocotools import mask as mask_utils

from shared.formats import layout
from shared.formats.export import files
from shared.formats.records import Annotation, SampleRecord

FORMAT = "yolo"
TASKS = ("detect", "segment")


def _fmt(v: float) -> str:
    return f"{min(max(v, 0.0), 1.0):.6f}"


def detection_line(ann: Annotation, width: int, height: int) -> str:
    x, y, w, h = ann.bbox
    values = ((x + w / 2) / width, (y + h / 2) / height, w / width, h / height)
    return " ".join([str(ann.category_id - 1), *map(_fmt, values)])


def instance_polygons(ann: Annotation) -> list[np.ndarray]:
    """The instance's polygons as (N, 2) pixel arrays with >= 3 points each."""
    polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in ann.polygons if len(p) >= 6]
    if not polys and ann.rle is not None:
        mask = mask_utils.decode({"size": list(ann.rle.size), "counts": ann.rle.counts.encode("ascii")})
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polys = [c.reshape(-1, 2).astype(np.float64) for c in contours if len(c) >= 3]
    return polys


def largest_polygon(polys: list[np.ndarray]) -> np.ndarray | None:
    # max() keeps the first of equal areas, so the choice is deterministic.
    return max(polys, key=lambda p: abs(cv2.contourArea(p.astype(np.float32))), default=None)


def segmentation_line(ann: Annotation, width: int, height: int) -> str | None:
    poly = largest_polygon(instance_polygons(ann))
    if poly is None:
        return None
    normalised = (poly / np.array([width, height], dtype=np.float64)).reshape(-1)
    return " ".join([str(ann.category_id - 1), *map(_fmt, normalised)])


def data_yaml(categories: Sequence[str], split_names: Sequence[str]) -> str:
    data = {split: f"images/{split}" for split in split_names}
    data["nc"] = len(categories)
    data["names"] = {i: name for i, name in enumerate(categories)}
    return yaml.safe_dump(data, sort_keys=True, allow_unicode=True)


def write_yolo(
    root: Path, records: Sequence[SampleRecord], categories: list[str], splits: dict[int, str]
) -> list[Path]:
    out_dir = files.reset_dir(layout.export_dir(root, FORMAT))
    written: list[Path] = []
    used_splits: set[str] = set()
    for record in files.sorted_by_index(records):
        files.check_categories(record, categories)
        split = files.split_of(record, splits)
        used_splits.add(split)
        stem = layout.sample_stem(record.index)
        w, h = record.width, record.height
        labels = {
            "detect": [detection_line(a, w, h) for a in record.annotations],
            "segment": [line for a in record.annotations if (line := segmentation_line(a, w, h))],
        }
        for task in TASKS:
            task_dir = out_dir / task
            written.append(files.copy_file(files.image_path(root, record), task_dir / "images" / split / f"{stem}.png"))
            text = "".join(line + "\n" for line in labels[task])
            written.append(files.atomic_write_text(task_dir / "labels" / split / f"{stem}.txt", text))
    # Ultralytics order of splits does not matter; sorted keys keep the bytes stable.
    for task in TASKS:
        written.append(files.atomic_write_text(out_dir / task / "data.yaml", data_yaml(categories, sorted(used_splits))))
    return written
