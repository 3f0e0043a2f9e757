"""Instances from a semantic label map: components, instance ids, boxes, RLE, polygons.

numpy / scipy / pycocotools / cv2 only (no torch), so the export writers and the service can
use it. Conventions: semantic uint8 with 0 background, 1..254 category ids, 255 ignore;
instance map uint16 with 0 = no instance, else `Annotation.instance_id`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from shared.formats.records import IGNORE, RLE, Annotation

# 8-connectivity: pixels touching diagonally belong to one object, as in cv2's contour tracing.
_STRUCTURE = np.ones((3, 3), dtype=bool)


@dataclass
class Instances:
    semantic: np.ndarray  # uint8 [H, W], small components turned into 255
    instances: np.ndarray  # uint16 [H, W]
    annotations: list[Annotation]


def encode_rle(mask: np.ndarray) -> RLE:
    """COCO compressed RLE of a binary [H, W] mask, counts as str."""
    enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return RLE(size=(int(enc["size"][0]), int(enc["size"][1])), counts=enc["counts"].decode("ascii"))


def decode_rle(rle: RLE) -> np.ndarray:
    """Inverse of `encode_rle`: uint8 [H, W] mask."""
    return mask_utils.decode({"size": list(rle.size), "counts": rle.counts.encode("ascii")})


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours as [x1, y1, x2, y2, ...] in pixel coordinates, each with >= 3 points.

    Coordinates are those of cv2 (boundary pixel centres), the usual input of COCO writers.
    Holes are not represented (the RLE keeps them). A region too thin to give a 3-point
    contour (a 1-pixel line or dot) has no area as a centre polygon, so it gets the outline of
    its pixels' box instead (pixel edges), so every non-empty mask has a usable polygon.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    if not polys and mask.any():
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
        polys = [[x0, y0, x1, y0, x1, y1, x0, y1]]
    return polys


def extract_instances(
    semantic: np.ndarray,
    category_ids: Sequence[int],
    category_names: Sequence[str],
    min_component_area: int = 0,
    scores: np.ndarray | None = None,
) -> Instances:
    """Connected components per class -> instance map and annotations.

    Components smaller than `min_component_area` pixels are not instances; they become 255 in
    the returned semantic map (the pixels were claimed by a class, so "background" would be a
    wrong label). Instance ids run 1..K in order of `category_ids`, then component order
    (row-major by first pixel). `scores`: per-pixel score of the winning class; an instance's
    score is its mean inside the instance (1.0 when not given).
    """
    if semantic.ndim != 2:
        raise ValueError(f"semantic map must be 2-D, got shape {semantic.shape}")
    if len(category_ids) != len(category_names):
        raise ValueError("category_ids and category_names differ in length")
    if scores is not None and scores.shape != semantic.shape:
        raise ValueError(f"scores {scores.shape} do not match the semantic map {semantic.shape}")
    semantic = semantic.astype(np.uint8, copy=True)
    instances = np.zeros(semantic.shape, dtype=np.uint16)
    annotations: list[Annotation] = []
    next_id = 1
    for cat_id, name in zip(category_ids, category_names):
        components, n = ndimage.label(semantic == cat_id, structure=_STRUCTURE)
        if n == 0:
            continue
        areas = np.bincount(components.ravel(), minlength=n + 1)
        for label, box in enumerate(ndimage.find_objects(components), start=1):
            if box is None:
                continue
            mask = components == label
            area = int(areas[label])
            if area < min_component_area:
                semantic[mask] = IGNORE
                continue
            if next_id > np.iinfo(np.uint16).max:
                raise ValueError("more than 65535 instances in one image")
            instances[mask] = next_id
            rows, cols = box
            annotations.append(
                Annotation(
                    instance_id=next_id,
                    category=name,
                    category_id=int(cat_id),
                    bbox=(float(cols.start), float(rows.start), float(cols.stop - cols.start), float(rows.stop - rows.start)),
                    area=float(area),
                    rle=encode_rle(mask),
                    polygons=mask_polygons(mask),
                    score=float(scores[mask].mean()) if scores is not None else 1.0,
                )
            )
            next_id += 1
    return Instances(semantic=semantic, instances=instances, annotations=annotations)


def instances_from_maps(
    semantic: np.ndarray,
    instances: np.ndarray,
    category_ids: Sequence[int],
    category_names: Sequence[str],
) -> Instances:
    """Given label maps (mask-to-image: the input masks are the labels) -> annotations.

    Each non-zero instance id is one instance; its class is the most frequent category id
    under it (background and ignore excluded). Instance ids are renumbered 1..K in order.
    """
    if semantic.shape != instances.shape:
        raise ValueError(f"semantic {semantic.shape} and instances {instances.shape} differ in size")
    names = dict(zip(category_ids, category_names))
    out = np.zeros(instances.shape, dtype=np.uint16)
    annotations: list[Annotation] = []
    for inst_id in np.unique(instances):
        if inst_id == 0:
            continue
        mask = instances == inst_id
        cats = semantic[mask]
        cats = cats[(cats != 0) & (cats != IGNORE)]
        if cats.size == 0:
            continue
        cat = int(np.bincount(cats).argmax())
        if cat not in names:
            continue
        mask &= semantic == cat
        ys, xs = np.nonzero(mask)
        k = len(annotations) + 1
        out[mask] = k
        annotations.append(Annotation(
            instance_id=k, category=names[cat], category_id=cat,
            bbox=(float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)),
            area=float(mask.sum()), rle=encode_rle(mask), polygons=mask_polygons(mask),
        ))
    return Instances(semantic=semantic.astype(np.uint8, copy=True), instances=out, annotations=annotations)
