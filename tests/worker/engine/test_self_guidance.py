"""Self-guidance: energies on attention maps, their gradient through the UNet, method layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.formats.spec import GenerationSpec, SpecError, parse_spec
from tests.support.tiny_pipelines import save_sd2, save_sdxl
from worker.engine.attention import control_attention
from worker.engine.generate import encode_prompt
from worker.engine.loading import load_model
from worker.engine.self_guidance import (
    GuidanceOptions,
    ObjectTarget,
    WindowedMapRecorder,
    _frozen,
    centroid,
    energy_terms,
    layout_energy,
    layout_images,
)
from worker.engine.session import EngineSession

torch.set_num_threads(1)
CLASSES = [{"name": "cat"}, {"name": "dog"}]


def test_centroid_and_size_terms_read_the_map():
    a = torch.zeros(8, 8)
    a[0:4, 4:8] = 1.0  # top-right quarter
    torch.testing.assert_close(centroid(a), torch.tensor([0.75, 0.25]))
    at = energy_terms(a, ObjectTarget((1,), (0.5, 0.0, 1.0, 0.5)))
    assert float(at["centroid"]) < 1e-6 and float(at["box"]) < 0.01 and float(at["size"]) < 0.01
    off = energy_terms(a, ObjectTarget((1,), (0.0, 0.5, 0.25, 0.75)))
    assert float(off["centroid"]) == pytest.approx(0.625 + 0.375) and float(off["box"]) > 0.2


def test_energy_decreases_along_its_gradient_through_the_unet():
    model = load_model("builtin:tiny-random")
    gen = GenerationSpec(width=32, height=32, steps=2, guidance_scale=1.0, batch_size=1)
    prompt = encode_prompt(model, ["a cat"], gen)
    targets = [[ObjectTarget((2,), (0.0, 0.0, 0.4, 0.4))]]
    recorder = WindowedMapRecorder(None, (0.0, 1.0))
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)

    def energy(latent):
        recorder.maps.clear()
        out = model.unet(latent, t, encoder_hidden_states=prompt.states).sample
        return layout_energy(recorder.maps, targets, {"centroid": 1.0, "size": 1.0, "box": 1.0}), out

    flags = [p.requires_grad for p in model.unet.parameters()]
    with _frozen(model.unet, False), control_attention(model.unet, [recorder], (16, 16)):
        xg = x.clone().requires_grad_(True)
        e0, _ = energy(xg)
        (grad,) = torch.autograd.grad(e0, xg)
        assert not any(p.grad is not None for p in model.unet.parameters())  # only d/d latent was built
        with torch.no_grad():
            e1, _ = energy(x - 0.05 * grad / grad.abs().max())
    assert float(grad.abs().sum()) > 0 and float(e1) < float(e0.detach())
    assert [p.requires_grad for p in model.unet.parameters()] == flags  # restored afterwards


def test_guidance_lowers_the_energy_over_a_run_and_steps_outside_the_window_are_plain():
    model = load_model("builtin:tiny-random")
    gen = GenerationSpec(width=32, height=32, steps=6, guidance_scale=2.0, scheduler="ddim", batch_size=1)
    targets = [[ObjectTarget((2,), (0.0, 0.0, 0.4, 0.4))]]
    weak, strong = [], []
    layout_images(model, ["a cat"], [3], gen, targets, GuidanceOptions(scale=1e-6, step_window=(0.0, 1.0)), energies=weak)
    layout_images(model, ["a cat"], [3], gen, targets, GuidanceOptions(scale=30.0, step_window=(0.0, 1.0)), energies=strong)
    assert [s for s, _ in strong] == list(range(6))
    assert strong[-1][1] < weak[-1][1]
    window = []
    layout_images(model, ["a cat"], [3], gen, targets, GuidanceOptions(scale=1.0, step_window=(0.0, 0.5)), energies=window)
    assert [s for s, _ in window] == [0, 1, 2]


def _spec(**layout):
    return parse_spec({
        "model": "builtin:tiny-random", "method": "layout", "classes": CLASSES, "num_images": 4, "seed": 5,
        "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2, "guidance_scale": 2.0},
        "layout": layout,
    })


def test_layout_labels_are_the_asked_boxes_and_records_say_so():
    spec = _spec(objects=[{"class": "cat", "box": [0.0, 0.0, 0.5, 0.5]},
                          {"class": "dog", "centroid": [0.75, 0.75], "size": 0.25, "phrase": "a big {class}"}])
    samples = list(EngineSession(spec).generate(range(2)))
    s = samples[0]
    assert s.record.prompt == "a cat and a big dog" and s.record.classes == ["cat", "dog"]
    p = s.record.parameters["layout"]
    assert p["objects"] == [{"class": "cat", "box": [0, 0, 16, 16]}, {"class": "dog", "box": [20, 20, 8, 8]}]
    assert p["labels"].startswith("layout")
    assert [(a.category, a.bbox) for a in s.record.annotations] == [("cat", (0.0, 0.0, 16.0, 16.0)), ("dog", (20.0, 20.0, 8.0, 8.0))]
    assert (s.semantic[:16, :16] == 1).all() and (s.semantic[20:28, 20:28] == 2).all()


def test_random_layouts_are_per_sample_reproducible_and_attention_labels_work():
    spec = _spec(random={"count": [1, 2], "size": [0.3, 0.4]}, labels="attention")
    session = EngineSession(spec)
    samples = list(session.generate(range(4)))
    layouts = [s.record.parameters["layout"]["objects"] for s in samples]
    assert len({str(x) for x in layouts}) > 1
    assert all(1 <= len(x) <= 2 for x in layouts)
    assert samples[0].record.parameters["layout"]["labels"] == "attention" and samples[0].semantic is not None
    again = list(EngineSession(spec).generate([3]))
    assert again[0].image.tobytes() == samples[3].image.tobytes()
    assert again[0].record.parameters == samples[3].record.parameters


def test_layout_spec_errors_name_the_field():
    with pytest.raises(SpecError) as e:
        _spec(objects=[{"class": "cow", "box": [0, 0, 0.5, 0.5]}])
    assert "cow" in str(e.value) and e.value.field.startswith("layout")
    with pytest.raises(SpecError) as e:
        _spec(objects=[{"class": "cat", "box": [0.5, 0, 0.2, 0.5]}])
    assert e.value.field.startswith("layout.objects")
    with pytest.raises(SpecError) as e:
        _spec(objects=[{"class": "cat", "centroid": [0.5, 0.5]}])
    assert "size" in str(e.value)


@pytest.mark.parametrize("save", [save_sd2, save_sdxl])
def test_layout_on_sd_and_sdxl_layouts(tmp_path, save):
    model = load_model(str(save(tmp_path / "m")))
    gen = GenerationSpec(width=32, height=32, steps=2, guidance_scale=2.0, batch_size=1)
    energies = []
    out = layout_images(model, ["a cat"], [1], gen, [[ObjectTarget((2,), (0.0, 0.0, 0.5, 0.5))]],
                        GuidanceOptions(scale=1.0, step_window=(0.0, 1.0), checkpointing=True), energies=energies)
    assert out.images[0].size == (32, 32) and len(energies) == 2
    assert not model.unet.is_gradient_checkpointing


def test_box_mask_keeps_each_objects_words_in_its_box_inside_its_step_window():
    from shared.formats.prompts import ClassMention, SamplePlan
    from worker.engine.attention import Site
    from worker.engine.methods.layout import box_mask

    model = load_model("builtin:shapes-v2")
    prompt = "a red circle and a blue square"
    plan = SamplePlan(0, 0, prompt, "", (ClassMention("circle", 1, ((6, 12),)), ClassMention("square", 2, ((25, 31),))))
    control = box_mask(model, [plan], [[(0, 0, 16, 16), (16, 16, 32, 32)]], (32, 32), (0.0, 0.5))
    ids = model.tokenizer(prompt)["input_ids"]
    vocab = model.tokenizer.convert_ids_to_tokens(ids)
    assert {(vocab[t], k) for t, k in control.class_tokens[0]} == {("red", 1), ("circle", 1), ("blue", 2), ("square", 2)}
    allowed = control.allowed(Site("x.attn2.processor", "cross", 2, (32, 32)))[0, 0].reshape(32, 32, -1)
    red = vocab.index("red")
    assert allowed[:16, :16, red].all() and not allowed[16:, :, red].any() and not allowed[:, 16:, red].any()
    assert allowed[..., 0].all()  # the start token stays free
    control.begin_step(5, 10)
    assert not control.active()  # outside [0, 0.5): the layer runs unmasked
    control.begin_step(4, 10)
    assert control.active()


def test_layout_with_box_mask_records_its_window():
    spec = parse_spec({"model": "builtin:shapes-v2", "method": "layout", "classes": [{"name": "circle"}],
                       "num_images": 1, "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 1},
                       "layout": {"objects": [{"class": "circle", "box": [0.1, 0.1, 0.6, 0.6]}], "phrase": "a red {class}",
                                  "box_mask": True, "box_mask_window": [0.0, 0.5]}})
    (sample,) = EngineSession(spec).generate([0])
    assert sample.record.parameters["layout"]["box_mask"] == [0.0, 0.5]
    with pytest.raises(SpecError, match="box_mask_window"):
        parse_spec({**spec.model_dump(mode="json", by_alias=True), "layout": {
            "objects": [{"class": "circle", "box": [0.1, 0.1, 0.6, 0.6]}], "box_mask_window": [0.6, 0.2]}})


def test_layout_shapes_fit_a_shape_of_each_class_into_its_box_as_region_and_label(tmp_path):
    from shared.shapes.dataset import write_real_dataset

    write_real_dataset(tmp_path / "real", 6, seed=3, size=32, formats=[], world="v2")
    layout = {"objects": [{"class": "circle", "box": [0.1, 0.1, 0.6, 0.6]}, {"class": "star", "box": [0.6, 0.55, 0.95, 0.95]}],
              "phrase": "a red {class}", "box_mask": True, "shapes": {"path": str(tmp_path / "real")}}
    spec = parse_spec({"model": "builtin:shapes-v2", "method": "layout", "seed": 2,
                       "classes": [{"name": "circle"}, {"name": "star"}], "num_images": 3,
                       "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 3}, "layout": layout})
    session = EngineSession(spec)
    samples = list(session.generate(range(3)))
    s = samples[0]
    p = s.record.parameters["layout"]
    assert p["labels"] == "layout (masks are the shapes fitted into the asked boxes)"
    assert len(p["shapes"]) == 2 and all(name.startswith("samples/") for name in p["shapes"])
    circle = s.semantic == 1
    ys, xs = np.nonzero(circle)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (3, 3, 19, 19)  # the asked box's extent
    assert 0.5 < circle[3:19, 3:19].mean() < 0.95  # a circle's share of its box, not the whole box
    assert [(a.category, a.bbox) for a in s.record.annotations][0] == ("circle", (3.0, 3.0, 16.0, 16.0))
    # the rectified region of each object's words is its label
    regions = session.method.regions(0)[0]
    assert ((regions == 1) == circle).all() and ((regions == 2) == (s.semantic == 2)).all()
    # per sample: the same in any batch, and samples draw their own shapes
    (again,) = EngineSession(spec).generate([2])
    assert (again.semantic == samples[2].semantic).all() and again.record.parameters == samples[2].record.parameters
    assert len({samples[k].semantic.tobytes() for k in range(3)}) > 1


def test_layout_shapes_need_box_mask_and_a_source_with_the_class(tmp_path):
    from shared.shapes.dataset import write_real_dataset

    base = {"objects": [{"class": "circle", "box": [0.1, 0.1, 0.6, 0.6]}], "shapes": {"path": str(tmp_path)}}
    with pytest.raises(SpecError, match="box_mask: true"):
        _spec(**base)
    write_real_dataset(tmp_path / "real", 2, seed=3, size=32, formats=[], world="v2")
    spec = parse_spec({"model": "builtin:shapes-v2", "method": "layout", "classes": [{"name": "cat"}], "num_images": 1,
                       "generation": {"width": 32, "height": 32, "steps": 2},
                       "layout": {"objects": [{"class": "cat", "box": [0.1, 0.1, 0.6, 0.6]}], "box_mask": True,
                                  "shapes": {"path": str(tmp_path / "real")}}})
    with pytest.raises(SpecError) as e:
        EngineSession(spec).generate([0]).__next__()
    assert e.value.field == "layout.shapes" and "'cat'" in str(e.value)


def _layout_first(tmp_path, **over):
    from shared.shapes.dataset import write_real_dataset

    write_real_dataset(tmp_path / "real", 8, seed=3, size=32, formats=[], world="v2")
    layout = {"from_prompts": True, "random": {"size": [0.35, 0.45]}, "box_mask": True, "scale": 0.0,
              "shapes": {"path": str(tmp_path / "real")}, **over}
    return parse_spec({"model": "builtin:shapes-v2", "method": "layout", "seed": 4,
                       "classes": [{"name": "circle"}, {"name": "square"}, {"name": "star"}], "num_images": 4,
                       "prompts": {"templates": ["a {colour} {class} and a {colour_2} {class_2}"],
                                   "slots": {"colour": ["red", "blue"], "colour_2": ["green", "yellow"]}},
                       "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2}, "layout": layout})


def test_layout_from_prompts_keeps_the_jobs_prompts_and_labels_each_class_word_by_its_shape(tmp_path):
    from shared.formats.prompts import plan_sample

    spec = _layout_first(tmp_path)
    session = EngineSession(spec)
    samples = list(session.generate(range(4)))
    for k, s in enumerate(samples):
        assert s.record.prompt == plan_sample(spec, k).prompt  # the text2image prompt, unchanged
        p = s.record.parameters["layout"]
        assert p["from_prompts"] is True and p["labels"].startswith("layout (masks are the shapes")
        assert [o["class"] for o in p["objects"]] == s.record.classes and len(p["objects"]) == 2
        regions = session.method.regions(k)[0]
        ids = np.array([0] + [spec.category_ids[o["class"]] for o in p["objects"]])
        assert (s.semantic == ids[regions]).all()  # labels are the rectified regions, by construction
        # the colour before each class word is kept inside that object's region with it
        control = session.method._box_mask([session.method.plan(k)])
        vocab = session.model.tokenizer.convert_ids_to_tokens(session.model.tokenizer(s.record.prompt)["input_ids"])
        words = {(vocab[t], obj) for t, obj in control.class_tokens[0]}
        assert {w for w, _ in words} == set(s.record.prompt.replace(" and ", " ").split()) - {"a"}
        assert len({obj for _, obj in words}) == 2
    # per sample, the same in any batch
    (again,) = EngineSession(spec).generate([3])
    assert again.image.tobytes() == samples[3].image.tobytes() and (again.semantic == samples[3].semantic).all()


def test_layout_from_prompts_makes_each_repeated_class_word_its_own_object(tmp_path):
    spec = _layout_first(tmp_path)
    spec = parse_spec({**spec.model_dump(mode="json", by_alias=True),
                       "prompts": {"source": "list", "prompts": ["a red circle and a blue circle"]}})
    session = EngineSession(spec)
    plan = session.method.plan(0)
    assert plan.prompt == "a red circle and a blue circle"  # no '; circle' appended: it would be a third object
    assert [m.spans for m in plan.mentions] == [((6, 12),), ((24, 30),)]
    (s,) = session.generate([0])
    assert [o["class"] for o in s.record.parameters["layout"]["objects"]] == ["circle", "circle"]
    assert len([a for a in s.record.annotations if a.category == "circle"]) == 2


def test_layout_scale_zero_runs_no_guidance(tmp_path):
    def inputs_of(spec):
        method = EngineSession(spec).method
        (inputs,) = method.batch_inputs([method.plan(0)])
        return inputs

    spec = _layout_first(tmp_path)
    plain = inputs_of(spec)
    assert plain.runner is None and len(plain.controls) == 1
    guided = parse_spec({**spec.model_dump(mode="json", by_alias=True),
                         "layout": {**spec.layout.model_dump(mode="json", by_alias=True), "scale": 1.0}})
    assert inputs_of(guided).runner is not None


def test_layout_from_prompts_spec_errors_name_the_field(tmp_path):
    with pytest.raises(SpecError) as e:
        _spec(objects=[{"class": "cat", "box": [0, 0, 0.5, 0.5]}], from_prompts=True)
    assert e.value.field.startswith("layout") and "random" in str(e.value)
    spec = _layout_first(tmp_path)
    with pytest.raises(SpecError) as e:
        parse_spec({**spec.model_dump(mode="json", by_alias=True),
                    "prompts": {"source": "list", "prompts": ["a red circle"], "append_class_names": True}})
    assert "append_class_names: false" in str(e.value)


def test_random_boxes_drop_what_does_not_fit_unless_the_prompt_names_it():
    from worker.engine.methods.layout import _random_boxes

    def draw(keep_all):
        return _random_boxes(np.random.default_rng(0), 2, (0.8, 0.9), True, keep_all)

    assert len(draw(False)) == 1  # two boxes of side > 0.5 never fit apart
    kept = draw(True)
    assert len(kept) == 2 and all(0 <= v <= 1 for b in kept for v in b)


def test_layout_first_on_the_shapes_model_draws_each_prompted_colour_inside_its_labelled_shape(tmp_path):
    """Behaviour, not plumbing: builtin:shapes-v2 fills each object's label with the colour its
    prompt gives that object (nearest palette colour) and leaves a flat background outside."""
    from shared.shapes.dataset import write_real_dataset
    from shared.shapes.world import PALETTE

    write_real_dataset(tmp_path / "real", 8, seed=3, size=48, formats=[], world="v2")
    prompts = ["a red circle and a blue square", "a yellow star and a green circle"]
    spec = parse_spec({"model": "builtin:shapes-v2", "method": "layout", "seed": 4,
                       "classes": [{"name": "circle"}, {"name": "square"}, {"name": "star"}], "num_images": 2,
                       "prompts": {"source": "list", "prompts": prompts},
                       "generation": {"width": 48, "height": 48, "steps": 20, "batch_size": 2, "guidance_scale": 1.5},
                       "layout": {"from_prompts": True, "random": {"size": [0.35, 0.5]}, "box_mask": True, "scale": 0.0,
                                  "shapes": {"path": str(tmp_path / "real")}}})
    names = ["red", "green", "blue", "yellow"]
    palette = np.array([PALETTE[n] for n in names], float)
    for s in EngineSession(spec).generate(range(2)):
        img = np.asarray(s.image.convert("RGB")).astype(float)
        nearest = np.argmin(((img[..., None, :] - palette) ** 2).sum(-1), -1)
        colours = [w for w in s.record.prompt.split() if w in names]
        for k, colour in enumerate(colours, start=1):
            region = s.instances == k
            assert region.sum() > 50 and (nearest[region] == names.index(colour)).mean() > 0.8, (s.record.prompt, colour)
        outside = s.semantic == 0
        saturation = img.max(-1) - img.min(-1)
        assert (saturation[outside] < 40).mean() > 0.95, s.record.prompt


def test_layout_first_spec_survives_the_round_trip_the_service_makes(tmp_path):
    """The service stores a parsed spec's full JSON and the worker parses it again."""
    spec = _layout_first(tmp_path)
    again = parse_spec(spec.model_dump(mode="json", by_alias=True))
    assert again.layout.from_prompts and again == spec
