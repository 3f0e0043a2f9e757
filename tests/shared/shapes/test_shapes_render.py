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
    assert len(COLOURS) >= 4 and len(SHAPES) >= 4


def test_unknown_word_error_lists_vocabulary():
    with pytest.raises(UnknownWordError) as err:
        validate_prompt("a Red hexagon")
    msg = str(err.value)
    assert "'hexagon'" in msg and "circle" in msg and "yellow" in msg
    assert err.value.words == ["hexagon"]


# ---------------------------------------------------------------- worlds and held-out concepts

def test_held_out_concepts_are_drawable_but_never_trained():
    from shared.shapes.world import DEFAULT_WORLD

    w = DEFAULT_WORLD
    assert w.held_out_colours and w.held_out_shapes
    for word in w.held_out_colours + w.held_out_shapes:
        assert word not in w.vocabulary
        with pytest.raises(UnknownWordError):
            validate_prompt(f"a {word}", w.vocabulary)
    # never drawn unless asked for: 300 random training scenes contain none of them
    for i in range(300):
        for o in render_scene(i).objects:
            assert o.colour in w.colours and o.shape in w.shapes
    # drawn exactly when asked, with exact ground truth
    colour, shape = w.held_out_colours[0], w.held_out_shapes[0]
    s = render_scene(7, objects=[(colour, shape), ("red", "circle")])
    assert [(o.colour, o.shape) for o in s.objects] == [(colour, shape), ("red", "circle")]
    cross = s.instance_mask(s.objects[0])
    assert (s.semantic[cross] == s.objects[0].category_id).all() and s.objects[0].category_id == 5
    # the held-out colour's pixels are its palette colour (inside, away from the anti-aliased edge)
    inner = np.argwhere(cross)[len(np.argwhere(cross)) // 2]
    assert np.abs(s.image[tuple(inner)].astype(int) - np.array(PALETTE[colour])).max() < 30


def test_forced_objects_outside_the_world_are_refused():
    with pytest.raises(ValueError, match="not drawable"):
        render_scene(1, objects=[("black", "circle")])


@pytest.mark.parametrize("background", ["flat", "gradient", "texture"])
def test_backgrounds(background):
    from shared.shapes.world import DEFAULT_WORLD

    w = DEFAULT_WORLD.with_(background=background)
    s = render_scene(3, world=w)
    bg = s.image[s.semantic == 0]
    _, counts = np.unique(bg, axis=0, return_counts=True)
    modal_share = counts.max() / len(bg)  # anti-aliased object edges are the only other values
    if background == "flat":
        assert modal_share > 0.8
    else:
        assert modal_share < 0.5
        assert bg.astype(float).std(axis=0).max() < 25  # mild: objects stay far more contrasted
    assert render_scene(3, world=w).image.tobytes() == s.image.tobytes()


def test_world_round_trips_through_json_and_v1_is_default_for_unrecorded_models():
    from shared.shapes.world import WORLDS, World, get_world

    for w in WORLDS.values():
        assert World.from_json(w.to_json()) == w
    assert get_world(None) == WORLDS["v1"]
    assert "purple" in WORLDS["v1"].vocabulary
    with pytest.raises(ValueError, match="held-out"):
        World(name="x", colours=("red",), shapes=("circle",), held_out_colours=("red",))


def test_object_counts_follow_the_world():
    from collections import Counter

    from shared.shapes.world import get_world

    n = 600
    for weights in ((1.0, 1.0, 1.0), (0.45, 0.40, 0.15)):  # v2's (uniform), and v2's first skewed counts
        world = get_world("v2").with_(count_weights=weights)
        counts = Counter(len(render_scene(i, world=world).objects) for i in range(n))
        for k, w in zip((1, 2, 3), weights):
            expected = n * w / sum(weights)
            # 4 binomial standard deviations: a count that ignores the weights is far outside
            assert abs(counts[k] - expected) < 4 * (expected * (1 - w / sum(weights))) ** 0.5, (weights, counts)
