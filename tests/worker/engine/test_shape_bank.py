"""layout.shapes: instance shapes of each class, fitted into asked boxes."""
from __future__ import annotations

import numpy as np
import pytest

from shared.engine import LabelMaps
from shared.formats.spec import SpecError
from worker.engine.mask_sources import MaskSource
from worker.engine.shape_bank import build_shape_bank


def _source(name: str, semantic: np.ndarray, instances: np.ndarray | None = None) -> MaskSource:
    return MaskSource(name, None, None, lambda: LabelMaps(semantic, instances))


def _disc(size: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= r * r


def test_the_bank_keeps_whole_instances_of_the_needed_classes_and_fits_them_into_a_box():
    sem = np.zeros((32, 32), np.uint8)
    sem[4:20, 4:20][_disc(16, 8.0)] = 1  # a disc of class 1, clear of the border
    sem[0:6, 26:32] = 2  # class 2 touching the border: cut, so not a shape
    sem[24:30, 2:10] = 2  # a whole 6x8 block of class 2
    bank = build_shape_bank([_source("a.png", sem)], {1: "circle", 2: "square"})
    (disc,) = bank.shapes[1]
    (block,) = bank.shapes[2]
    assert disc.source == "a.png" and disc.mask.shape == (16, 16) and not disc.mask[0, 0] and disc.mask[8, 8]
    assert block.mask.shape == (6, 8) and block.mask.all()
    fitted = bank.fitted(1, np.random.default_rng(0), 10, 20)
    assert fitted.mask.shape == (10, 20)
    assert fitted.mask.any(0).all() and fitted.mask.any(1).all()  # it fills the box's extent
    assert not fitted.mask[0, 0] and fitted.mask[5, 10]  # and keeps the disc's shape: corners empty


def test_instance_maps_split_touching_objects_of_one_class():
    sem = np.zeros((24, 24), np.uint8)
    sem[2:10, 2:20] = 1
    inst = np.zeros((24, 24), np.uint16)
    inst[2:10, 2:10], inst[2:10, 10:20] = 1, 2
    bank = build_shape_bank([_source("b.png", sem, inst)], {1: "square"})
    assert sorted(s.mask.shape for s in bank.shapes[1]) == [(8, 8), (8, 10)]


def test_a_class_the_source_lacks_is_a_spec_error_naming_the_field():
    sem = np.zeros((16, 16), np.uint8)
    sem[4:8, 4:8] = 1
    with pytest.raises(SpecError) as e:
        build_shape_bank([_source("c.png", sem)], {1: "circle", 3: "star"})
    assert e.value.field == "layout.shapes" and "'star'" in str(e.value)


def test_free_standing_shapes_are_preferred_once_a_class_has_enough(monkeypatch):
    import worker.engine.shape_bank as sb

    def scene(touch: bool) -> np.ndarray:
        sem = np.zeros((16, 16), np.uint8)
        sem[4:10, 4:10] = 1
        if touch:
            sem[4:10, 10:13] = 2  # another object right beside it
        return sem

    sources = [_source("touching.png", scene(True)), _source("free.png", scene(False))]
    bank = build_shape_bank(sources, {1: "square"})
    assert sorted(s.source for s in bank.shapes[1]) == ["free.png", "touching.png"]  # too few free ones: both
    monkeypatch.setattr(sb, "MIN_FREE", 1)
    bank = build_shape_bank(sources, {1: "square"})
    assert [s.source for s in bank.shapes[1]] == ["free.png"]
