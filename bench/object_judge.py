"""A per-object reading of shapes-world images, for rates that blobs and fragments must not pass.

The pixel judge (bench/quality.py's PairJudge, a (colour, shape) segmenter trained on real
renders) calls a pair present when it wins MIN_PAIR_PIXELS pixels anywhere. On generated
images that is too easy: a blob or a few fragments of the right colour win pixels of the
nearest pair. Here every *object* is read on its own:

1. objects are the 4-connected regions of one colour in the judge's reading (touching objects of
   different colours are read apart);
2. an object's shape is the majority of the judge's pixels in it, and it counts only when that
   majority holds `min_purity` of the region (one object, not a patchwork);
3. its silhouette must match its shape: the shape is drawn with the world's own renderer at
   the region's centroid, scaled to its area, at every rotation a `angle_step` apart, and the
   best IoU must reach that shape's threshold, the `quantile` of the same IoU over objects of
   real renders (so 95% of real objects pass: a blob read as a cross does not);
4. regions smaller than `min_area_frac` of the smallest real object of that shape are
   fragments, not objects.
Thresholds are calibrated on real renders only (`calibrate`), never on generated images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from shared.shapes.render import shape_coverage

# Rotational period of each shape's silhouette (radians): the rotation search covers one period.
PERIOD = {"circle": 2 * math.pi, "square": math.pi / 2, "triangle": 2 * math.pi / 3, "star": 2 * math.pi / 5,
          "cross": math.pi / 2}
REFERENCE_RADIUS = 10.0
# A region counts as a shape by its outline when that shape fits it best at this IoU or more
# (real renders: about 0.95; a blob fits a circle best, never a cross).
SILHOUETTE_FLOOR = 0.8


@dataclass(frozen=True)
class JudgedObject:
    colour: str
    shape: str
    area: int
    purity: float  # share of the region's pixels the judge gives its majority shape
    shape_iou: float  # best IoU of the region with its shape drawn at its centroid, area-matched


@lru_cache(maxsize=None)
def _reference_area(shape: str) -> float:
    size = int(4 * REFERENCE_RADIUS)
    return float(shape_coverage(shape, size / 2, size / 2, REFERENCE_RADIUS, 0.0, size).sum())


def shape_iou(region: np.ndarray, shape: str, angle_step: float = math.radians(6)) -> float:
    """Best IoU of a boolean region with `shape` at the region's centroid and area, over rotations."""
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return 0.0
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5  # pixel centres: the renderer's coordinates are pixel corners
    r = REFERENCE_RADIUS * math.sqrt(len(ys) / _reference_area(shape))
    size = region.shape[0]
    best = 0.0
    n = max(1, int(round(PERIOD[shape] / angle_step)))
    for k in range(n):
        drawn = shape_coverage(shape, cx, cy, r, k * PERIOD[shape] / n, size) >= 0.5
        inter = np.logical_and(drawn, region).sum()
        best = max(best, inter / max(np.logical_or(drawn, region).sum(), 1))
    return float(best)


def regions_of(pair_map: np.ndarray, n_shapes: int) -> list[np.ndarray]:
    """Candidate objects: 4-connected regions of one judged colour each (boolean masks), so that
    touching objects of different colours are read apart (the judge's colours are reliable: 1.00 on
    generated images; its shapes are what is being judged)."""
    colour = np.where(pair_map > 0, (pair_map - 1) // n_shapes, -1)
    out = []
    for c in np.unique(colour[colour >= 0]):
        labels, n = ndimage.label(colour == c)
        out += [labels == k for k in range(1, n + 1)]
    return out


def read_objects(pair_map: np.ndarray, colours: tuple[str, ...], shapes: tuple[str, ...],
                 min_area: dict[str, float] | None = None) -> list[JudgedObject]:
    """Objects of one image from the judge's per-pixel pair map (0 background, else 1 + pair index,
    pair index = colour index * len(shapes) + shape index). Regions under `min_area` of their
    shape are fragments: read, but their silhouette is not searched (shape_iou 0)."""
    out = []
    for region in regions_of(pair_map, len(shapes)):
        pairs = pair_map[region] - 1
        colour = colours[int(pairs[0]) // len(shapes)]
        votes = np.bincount(pairs % len(shapes), minlength=len(shapes))
        shape = shapes[int(votes.argmax())]
        area = int(region.sum())
        fragment = min_area is not None and area < min_area.get(shape, 0.0)
        out.append(JudgedObject(colour, shape, area, float(votes.max() / area), 0.0 if fragment else shape_iou(region, shape)))
    return out


def silhouette_objects(pair_map: np.ndarray, colours: tuple[str, ...], shapes: tuple[str, ...],
                       min_area: dict[str, float], floor: float = SILHOUETTE_FLOOR) -> list[tuple[str, str, float]]:
    """(colour, shape, IoU) of each region whose silhouette matches one of `shapes` best, at IoU
    >= `floor`: the shape read from the region's outline alone (the renderer's own shapes as
    templates), its colour from the judge. For generated pictures, where the judge's per-pixel
    shape votes mislead (drawn crosses that match a cross at IoU 0.90 get half their pixels read
    as triangle) while its colours hold."""
    out = []
    for region in regions_of(pair_map, len(shapes)):
        colour = colours[int(pair_map[region][0] - 1) // len(shapes)]
        ious = {s: shape_iou(region, s) for s in shapes}
        shape = max(ious, key=ious.get)
        if ious[shape] >= floor and region.sum() >= min_area.get(shape, math.inf):
            out.append((colour, shape, ious[shape]))
    return out


@dataclass(frozen=True)
class ObjectRule:
    """What counts as an object of a shape: thresholds calibrated on real renders."""

    min_iou: dict[str, float]
    min_area: dict[str, float]
    min_purity: float = 0.6

    def accepts(self, obj: JudgedObject) -> bool:
        return (obj.purity >= self.min_purity and obj.area >= self.min_area.get(obj.shape, math.inf)
                and obj.shape_iou >= self.min_iou.get(obj.shape, math.inf))

    def to_json(self) -> dict:
        return {"min_shape_iou": {k: round(v, 4) for k, v in self.min_iou.items()},
                "min_area": {k: round(v, 1) for k, v in self.min_area.items()}, "min_purity": self.min_purity}


def calibrate(pair_maps, true_shapes, true_areas, n_shapes: int, quantile: float = 0.05, min_area_frac: float = 0.4,
              min_purity: float = 0.6) -> ObjectRule:
    """From the judge's reading of real renders that hold one whole object each (`true_shapes`,
    `true_areas` from their ground truth): per shape, the `quantile` of the largest region's IoU
    with that shape, and `min_area_frac` of the smallest true area. Calibrated through the judge,
    as generated images are read, so its own blur is in the threshold."""
    ious: dict[str, list[float]] = {}
    areas: dict[str, list[int]] = {}
    for pm, shape, area in zip(pair_maps, true_shapes, true_areas):
        regions = regions_of(pm, n_shapes)
        largest = max(regions, key=lambda r: r.sum()) if regions else np.zeros_like(pm, bool)
        ious.setdefault(shape, []).append(shape_iou(largest, shape))
        areas.setdefault(shape, []).append(int(area))
    return ObjectRule({s: float(np.quantile(v, quantile)) for s, v in ious.items()},
                      {s: min_area_frac * float(min(v)) for s, v in areas.items()}, min_purity)
