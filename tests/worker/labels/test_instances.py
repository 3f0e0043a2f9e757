"""Instances, boxes, RLE and polygons from semantic maps (no torch)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from worker.labels.instances import decode_rle, encode_rle, extract_instances, mask_polygons

REPO = Path(__file__).resolve().parents[3]


def _scene() -> np.ndarray:
    sem = np.zeros((20, 30), dtype=np.uint8)
    sem[2:7, 3:10] = 1  # class 1, 5x7 = 35 px
    sem[12:18, 20:28] = 1  # class 1 again, separate: 6x8 = 48 px
    sem[10:14, 2:6] = 2  # class 2, 4x4 = 16 px
    sem[0:2, 28:30] = 2  # class 2, tiny: 2x2 = 4 px
    sem[19, 0] = 255  # already uncertain
    return sem


def test_components_become_instances():
    res = extract_instances(_scene(), [1, 2], ["cat", "dog"], min_component_area=5)
    anns = res.annotations
    assert [(a.instance_id, a.category, a.category_id) for a in anns] == [
        (1, "cat", 1),
        (2, "cat", 1),
        (3, "dog", 2),
    ]
    assert [a.bbox for a in anns] == [(3.0, 2.0, 7.0, 5.0), (20.0, 12.0, 8.0, 6.0), (2.0, 10.0, 4.0, 4.0)]
    assert [a.area for a in anns] == [35.0, 48.0, 16.0]
    assert res.instances.dtype == np.uint16
    for a in anns:
        assert int((res.instances == a.instance_id).sum()) == a.area
    assert set(np.unique(res.instances)) == {0, 1, 2, 3}


def test_small_components_become_uncertain():
    sem = _scene()
    res = extract_instances(sem, [1, 2], ["cat", "dog"], min_component_area=5)
    assert (res.semantic[0:2, 28:30] == 255).all()
    assert (res.instances[0:2, 28:30] == 0).all()
    assert res.semantic[19, 0] == 255
    assert (res.semantic[10:14, 2:6] == 2).all()  # 16 px >= 5: kept
    assert sem[0, 28] == 2  # input not modified
    kept_all = extract_instances(sem, [1, 2], ["cat", "dog"], min_component_area=0)
    assert len(kept_all.annotations) == 4


def test_diagonal_pixels_are_one_instance():
    sem = np.zeros((6, 6), dtype=np.uint8)
    sem[1, 1] = sem[2, 2] = sem[3, 3] = 1
    res = extract_instances(sem, [1], ["x"], min_component_area=0)
    assert len(res.annotations) == 1
    assert res.annotations[0].bbox == (1.0, 1.0, 3.0, 3.0)


def test_rle_round_trip_and_coco_consistency():
    res = extract_instances(_scene(), [1, 2], ["cat", "dog"], min_component_area=5)
    for a in res.annotations:
        assert a.rle is not None and isinstance(a.rle.counts, str)
        assert a.rle.size == (20, 30)
        decoded = decode_rle(a.rle)
        assert np.array_equal(decoded.astype(bool), res.instances == a.instance_id)
        coco = {"size": list(a.rle.size), "counts": a.rle.counts.encode()}
        assert float(mask_utils.area(coco)) == a.area
        assert tuple(float(v) for v in mask_utils.toBbox(coco)) == a.bbox


def test_rle_of_mask_with_hole():
    m = np.zeros((9, 9), dtype=np.uint8)
    m[1:8, 1:8] = 1
    m[4, 4] = 0
    assert np.array_equal(decode_rle(encode_rle(m)), m)


def test_polygons_have_three_points_and_cover_the_mask():
    res = extract_instances(_scene(), [1, 2], ["cat", "dog"], min_component_area=5)
    for a in res.annotations:
        assert a.polygons
        for poly in a.polygons:
            assert len(poly) >= 6 and len(poly) % 2 == 0
        x, y, w, h = a.bbox
        pts = np.array(a.polygons[0]).reshape(-1, 2)
        assert pts[:, 0].min() == x and pts[:, 0].max() == x + w - 1
        assert pts[:, 1].min() == y and pts[:, 1].max() == y + h - 1
        # The polygon, filled, gives back the mask (rectangles are exact).
        filled = np.zeros(res.semantic.shape, np.uint8)
        cv2.fillPoly(filled, [pts.astype(np.int32)], 1)
        assert np.array_equal(filled.astype(bool), res.instances == a.instance_id)


def test_thin_region_gets_a_box_polygon():
    m = np.zeros((5, 8), dtype=np.uint8)
    m[2, 1:7] = 1  # a 1-pixel line: its contour has 2 points
    polys = mask_polygons(m)
    assert polys == [[1.0, 2.0, 7.0, 2.0, 7.0, 3.0, 1.0, 3.0]]  # pixel edges: non-zero area
    rle = mask_utils.merge(mask_utils.frPyObjects(polys, 5, 8))
    assert np.array_equal(mask_utils.decode(rle), m)
    assert mask_polygons(np.zeros((3, 3), np.uint8)) == []


def test_instance_score_is_mean_score_inside():
    sem = np.zeros((4, 4), dtype=np.uint8)
    sem[:2, :2] = 1
    scores = np.zeros((4, 4), dtype=np.float32)
    scores[:2, :2] = [[0.6, 0.8], [1.0, 0.6]]
    res = extract_instances(sem, [1], ["a"], scores=scores)
    assert res.annotations[0].score == pytest.approx(0.75)
    assert extract_instances(sem, [1], ["a"]).annotations[0].score == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError):
        extract_instances(np.zeros((2, 2, 2), np.uint8), [1], ["a"])
    with pytest.raises(ValueError):
        extract_instances(np.zeros((2, 2), np.uint8), [1, 2], ["a"])
    with pytest.raises(ValueError):
        extract_instances(np.zeros((2, 2), np.uint8), [1], ["a"], scores=np.zeros((3, 3)))


def test_importing_labels_does_not_import_torch():
    code = "import sys, worker.labels.instances; sys.exit(1 if 'torch' in sys.modules else 0)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
