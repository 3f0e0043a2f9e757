"""COCO instances export.

    coco/annotations/instances_<split>.json
    coco/images/<split>/<stem>.png

Ids: category ids are the job's (1..C); image id = sample index + 1 (COCO tools treat
id 0 as "missing" in places, so ids start at 1 like the categories); annotation ids
count from 1 across the whole dataset, in (sample index, annotation order) order, so
the split files can be merged without duplicate ids.

Segmentation is compressed RLE with `counts` as str. An annotation without RLE but with
polygons gets its polygons rasterised to RLE by pycocotools; one with neither (a box
from the detection adaptor) has no `segmentation` key, which COCO readers accept for
box-only data.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from shared.formats import layout
from shared.formats.export import files
from shared.formats.records import Annotation, SampleRecord

FORMAT = "coco"


def coco_categories(categories: Sequence[str]) -> list[dict[str, Any]]:
    return [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(categories)]


def coco_segmentation(ann: Annotation, height: int, width: int) -> dict[str, Any] | None:
    if ann.rle is not None:
        return {"size": [int(ann.rle.size[0]), int(ann.rle.size[1])], "counts": ann.rle.counts}
    polygons = [p for p in ann.polygons if len(p) >= 6]
    if polygons:
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return None


def coco_annotation(ann: Annotation, ann_id: int, image_id: int, height: int, width: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": ann.category_id,
        "bbox": [float(v) for v in ann.bbox],
        "area": float(ann.area),
        "iscrowd": 0,
        "score": float(ann.score),
    }
    segmentation = coco_segmentation(ann, height, width)
    if segmentation is not None:
        out["segmentation"] = segmentation
    return out


def write_coco(
    root: Path, records: Sequence[SampleRecord], categories: list[str], splits: dict[int, str]
) -> list[Path]:
    out_dir = files.reset_dir(layout.export_dir(root, FORMAT))
    by_split: dict[str, dict[str, list[dict[str, Any]]]] = {}
    written: list[Path] = []
    ann_id = 0
    for record in files.sorted_by_index(records):
        files.check_categories(record, categories)
        split = files.split_of(record, splits)
        doc = by_split.setdefault(split, {"images": [], "annotations": []})
        stem = layout.sample_stem(record.index)
        image_id = record.index + 1
        file_name = f"{stem}.png"
        written.append(files.copy_file(files.image_path(root, record), out_dir / "images" / split / file_name))
        image = {"id": image_id, "file_name": file_name, "width": record.width, "height": record.height}
        if "mix" in record.parameters or "augment" in record.parameters:  # lineage of augmented / mixed sets
            mix = record.parameters.get("mix") or {"synthetic": True, "source": record.parameters["augment"]["source_image"]}
            image["dsgen_synthetic"], image["dsgen_source"] = bool(mix["synthetic"]), mix["source"]
        doc["images"].append(image)
        for ann in record.annotations:
            ann_id += 1
            doc["annotations"].append(coco_annotation(ann, ann_id, image_id, record.height, record.width))

    for split, doc in sorted(by_split.items()):
        dataset = {
            "info": {"description": "dsgen synthetic dataset", "version": "1.0"},
            "licenses": [],
            "categories": coco_categories(categories),
            **doc,
        }
        path = out_dir / "annotations" / f"instances_{split}.json"
        written.append(files.atomic_write_text(path, files.dumps_json(dataset)))
    return written
