"""The outline classifier (bench/outline_classifier.py) on exact regions of real renders: it reads
real objects' shapes from their outlines alone, and a blob is never a cross."""
from __future__ import annotations

import numpy as np
import pytest

from bench import outline_classifier as oc
from shared.shapes import render_scene
from shared.shapes.world import World

WORLD = World(name="outline-test", colours=("red", "blue", "cyan"), shapes=("circle", "square", "cross"),
              background="flat", count_weights=(1.0,), size_frac=(0.34, 0.55))
SIDE = 48


def region(i: int, shape: str) -> np.ndarray:
    return render_scene(9000 + i, SIDE, world=WORLD, objects=[(WORLD.colours[i % 3], shape)]).semantic > 0


@pytest.fixture(scope="module")
def classifier() -> oc.OutlineClassifier:
    shapes = [WORLD.shapes[i % 3] for i in range(180)]
    return oc.OutlineClassifier([region(i, s) for i, s in enumerate(shapes)], shapes, WORLD.shapes, steps=300)


def test_outline_does_not_depend_on_where_or_how_big():
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    small = (abs(yy - 12) <= 4) & (abs(xx - 14) <= 4)
    large = (abs(yy - 28) <= 9) & (abs(xx - 26) <= 9)
    a, b = oc.outline(small), oc.outline(large)
    assert np.abs(a - b).mean() < 0.08
    # a square of area A spans sqrt(A) of the grid's 2.2 sqrt(A): about a fifth of it, in the middle
    assert 0.15 < a.mean() < 0.3 and a[oc.OUTLINE_SIDE // 2, oc.OUTLINE_SIDE // 2] == 1.0
    rotated = oc.outline(large, angle=np.pi / 4)
    assert np.abs(rotated - b).mean() > 0.05  # the angle is not ignored: training sees every rotation


def test_real_objects_are_read_by_their_outline(classifier):
    assert classifier.real_accuracy >= 0.9
    for shape in WORLD.shapes:
        reads = [classifier.read(region(500 + i, shape)) for i in range(20)]
        assert np.mean([r is not None and r[0] == shape for r in reads]) >= 0.75, shape  # calibrated so that about 95% pass
    assert set(classifier.to_json()["min_probability"]) == set(WORLD.shapes)


def test_a_blob_is_a_circle_or_nothing(classifier):
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    for radius in (6, 9, 12):
        disk = (yy - 24) ** 2 + (xx - 24) ** 2 < radius ** 2
        read = classifier.read(disk)
        assert read is None or read[0] == "circle", (radius, read)
    ellipse = ((yy - 24) / 11.0) ** 2 + ((xx - 24) / 7.0) ** 2 < 1
    read = classifier.read(ellipse)
    assert read is None or read[0] != "cross"


def test_objects_of_a_pair_map_get_the_judges_colour(classifier):
    cross = region(700, "cross")
    pm = np.zeros((SIDE, SIDE), np.int64)
    pm[cross] = 1 + WORLD.colours.index("cyan") * 3 + WORLD.shapes.index("square")  # the judge's votes say square
    (found,) = oc.outline_objects(pm, WORLD.colours, WORLD.shapes, classifier, {"cross": 20.0, "circle": 20.0, "square": 20.0})
    assert found[:2] == ("cyan", "cross")
    assert oc.outline_objects(pm, WORLD.colours, WORLD.shapes, classifier, {"cross": 1e6}) == []  # a fragment
