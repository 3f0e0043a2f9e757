import numpy as np
import pytest

from shared.shapes import COLOURS, MAX_OBJECTS, PALETTE, SHAPES, VOCABULARY, render_scene
from shared.shapes.world import UnknownWordError, make_caption, split_words, validate_prompt

SEEDS = range(40)


def test_same_seed_same_scene_byte_for_byte():
    a, b = render_scene(123), render_scene(123)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.semantic.tobytes() == b.semantic.tobytes()
    assert a.instances.tobytes() == b.instances.tobytes()
    assert a.objects == b.objects and a.caption == b.caption


def test_different_seeds_differ():
    assert render_scene(1).image.tobytes() != render_scene(2).image.tobytes()


@pytest.mark.parametrize("seed", SEEDS)
def test_ground_truth_is_consistent(seed):
    s = render_scene(seed, size=32)
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
    assert 1 <= len(s.objects) <= MAX_OBJECTS
    ids = sorted(int(v) for v in np.unique(s.instances) if v)
    assert ids == [o.instance_id for o in s.objects]  # every object visible, no stray ids
    for o in s.objects:
        m = s.instance_mask(o)
        ys, xs = np.nonzero(m)
        assert o.box == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert o.area == m.sum() > 0
        # instance/class agreement: the semantic mask has the object's class on all its pixels
        assert (s.semantic[m] == o.category_id).all()
        assert o.shape in SHAPES and o.colour in COLOURS
    # semantic foreground == union of instances
    assert ((s.semantic > 0) == (s.instances > 0)).all()
    assert s.caption == make_caption([(o.colour, o.shape) for o in s.objects])


def test_objects_are_drawn_in_their_colour():
    s = render_scene(7, size=64)
    for o in s.objects:
        m = s.instance_mask(o)
        # interior pixels (fully covered) are close to the palette colour
        inner = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
        mean = s.image[inner].mean(axis=0)
        dists = {c: np.linalg.norm(mean - np.array(PALETTE[c])) for c in COLOURS}
        assert min(dists, key=dists.get) == o.colour


def test_occlusion_keeps_most_of_each_object_visible():
    for seed in SEEDS:
        s = render_scene(seed)
        for o in s.objects:
            assert o.area >= 0.5 * (o.extent ** 2) * 0.3  # not reduced to a sliver


def test_n_objects_and_errors():
    assert len(render_scene(5, n_objects=1).objects) == 1
    with pytest.raises(ValueError):
        render_scene(5, n_objects=MAX_OBJECTS + 1)


def test_captions_and_vocabulary():
    assert make_caption([("red", "circle")]) == "a red circle"
    assert make_caption([("red", "circle"), ("blue", "square"), ("green", "star")]) == \
        "a red circle, a blue square and a green star"
    assert make_caption([("red", "circle"), ("blue", "circle")], class_suffix=True) == \
        "a red circle and a blue circle ; circle"
    for cap in (render_scene(i).caption for i in range(20)):
        assert validate_prompt(cap) == split_words(cap)
    assert set(COLOURS) | set(SHAPES) <= set(VOCABULARY)
    assert len(COLOURS) >= 5 and len(SHAPES) >= 4


def test_unknown_word_error_lists_vocabulary():
    with pytest.raises(UnknownWordError) as err:
        validate_prompt("a Red hexagon")
    msg = str(err.value)
    assert "'hexagon'" in msg and "circle" in msg and "purple" in msg
    assert err.value.words == ["hexagon"]
