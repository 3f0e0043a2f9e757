"""method mask2image: source loaders (masks / COCO / VOC / dsgen), rectified and ControlNet backends."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from shared.formats.spec import SourceSpec, SpecError, parse_spec
from shared.shapes.dataset import write_real_dataset
from worker.engine.mask_sources import load_mask_sources
from worker.engine.session import EngineSession

torch.set_num_threads(1)
SHAPES = ("circle", "square", "triangle", "star")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_real_dataset(out, 4, seed=3, size=32, formats=["coco", "voc"])
    return out


def _truth(root, index):
    return np.asarray(Image.open(root / "samples" / f"{index:06d}" / "semantic.png"))


def _spec(source: dict, **m2i):
    return parse_spec({
        "model": "builtin:tiny-random",
        "method": "mask2image",
        "classes": [{"name": "cat"}, {"name": "dog"}],
        "num_images": 4,
        "seed": 1,
        "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2},
        "mask2image": {"source": source, **m2i},
    })


def _masks_folder(tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    a = np.zeros((32, 32), np.uint8)
    a[4:20, 2:14] = 1
    a[10:28, 18:30] = 2
    b = np.zeros((32, 32), np.uint8)
    b[8:24, 8:24] = 2
    Image.fromarray(a, mode="L").save(folder / "a.png")
    Image.fromarray(b, mode="L").save(folder / "b.png")
    return folder, {"a.png": a, "b.png": b}


@pytest.mark.parametrize("fmt", ["dsgen", "coco", "voc"])
def test_loaders_agree_with_the_rendered_truth(shapes_dir, fmt):
    root = shapes_dir if fmt == "dsgen" else shapes_dir / fmt
    source = SourceSpec(path=str(root), format="auto")
    found = load_mask_sources(source, SHAPES, root)
    assert len(found) == 4
    by_stem = {s.name.split("/")[-2] if fmt == "dsgen" else s.name.rsplit("/", 1)[-1].split(".")[0]: s for s in found}
    for i in range(4):
        maps = by_stem[f"{i:06d}"].load()
        np.testing.assert_array_equal(maps.semantic, _truth(shapes_dir, i))
        assert maps.instances is not None and maps.instances.max() >= 1
    if fmt == "dsgen":
        assert all(s.caption and s.image is not None for s in found)


def test_classes_the_job_does_not_name_become_ignore(shapes_dir):
    found = load_mask_sources(SourceSpec(path=str(shapes_dir)), ("square",), shapes_dir)
    for i, s in enumerate(found):
        truth, got = _truth(shapes_dir, i), s.load().semantic
        assert set(np.unique(got)) <= {0, 1, 255}
        np.testing.assert_array_equal(got == 1, truth == 2)
        np.testing.assert_array_equal(got == 255, (truth != 0) & (truth != 2))


def test_masks_folder_values_beyond_the_classes_are_refused(tmp_path):
    folder, _ = _masks_folder(tmp_path)
    bad = np.full((8, 8), 7, np.uint8)
    Image.fromarray(bad, mode="L").save(folder / "c.png")
    found = load_mask_sources(SourceSpec(path=str(folder)), ("cat", "dog"), folder)
    with pytest.raises(SpecError, match="c.png has value 7, but the job has 2 classes"):
        [s.load() for s in found]


def test_rectified_labels_are_the_input_masks_and_records_name_them(tmp_path):
    folder, masks = _masks_folder(tmp_path)
    spec = _spec({"path": str(folder)}, variants=2)
    samples = list(EngineSession(spec).generate(range(4)))
    assert [s.record.parameters["mask2image"]["source_mask"] for s in samples] == ["a.png", "a.png", "b.png", "b.png"]
    assert [s.record.parameters["mask2image"]["variant"] for s in samples] == [0, 1, 0, 1]
    assert samples[0].record.prompt == "cat dog" and samples[2].record.prompt == "dog"
    assert samples[0].record.classes == ["cat", "dog"]
    for s in samples:
        np.testing.assert_array_equal(s.semantic, masks[s.record.parameters["mask2image"]["source_mask"]])
    a = samples[0].record.annotations
    assert [(x.category, x.bbox) for x in a] == [("cat", (2.0, 4.0, 12.0, 16.0)), ("dog", (18.0, 10.0, 12.0, 18.0))]
    # Variants of one mask differ (seeds), and the run is reproducible.
    assert samples[0].image.tobytes() != samples[1].image.tobytes()
    again = list(EngineSession(spec).generate([1]))
    assert again[0].image.tobytes() == samples[1].image.tobytes()


def test_rectification_changes_the_image_versus_unmasked_generation(tmp_path):
    folder, _ = _masks_folder(tmp_path)
    rect = list(EngineSession(_spec({"path": str(folder)}, prompt="template", template="a photo of {classes}")).generate([0]))
    t2i = parse_spec({
        "model": "builtin:tiny-random", "classes": [{"name": "cat"}, {"name": "dog"}],
        "prompts": {"source": "list", "prompts": ["a photo of cat dog"], "append_class_names": False},
        "num_images": 4, "seed": 1, "labels": {"mode": "none"},
        "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2},
    })
    plain = list(EngineSession(t2i).generate([0]))
    assert rect[0].record.prompt == plain[0].record.prompt == "a photo of cat dog"
    assert rect[0].record.seed == plain[0].record.seed
    assert rect[0].image.tobytes() != plain[0].image.tobytes()


def test_source_prompt_appends_missing_classes(shapes_dir):
    spec = parse_spec({
        "model": "builtin:tiny-random", "method": "mask2image",
        "classes": [{"name": "circle"}, {"name": "square"}, {"name": "triangle"}, {"name": "star"}],
        "num_images": 4, "labels": {"mode": "none"},
        "generation": {"width": 32, "height": 32, "steps": 1, "batch_size": 4},
        "mask2image": {"source": {"path": str(shapes_dir)}, "prompt": "source"},
    })
    session = EngineSession(spec)
    for i in range(4):
        plan = session.plan(i)
        rec = json.loads((shapes_dir / "samples" / f"{i:06d}" / "record.json").read_text())
        assert plan.prompt.startswith(rec["prompt"])
        assert {m.name for m in plan.mentions} == set(rec["classes"])
        for m in plan.mentions:
            for a, b in m.spans:
                assert plan.prompt[a:b] == m.name


def test_controlnet_backend_with_a_tiny_controlnet(tmp_path):
    from diffusers import ControlNetModel

    from worker.engine.loading import load_model

    model = load_model("builtin:tiny-random")
    net = ControlNetModel.from_unet(model.unet, conditioning_embedding_out_channels=(16, 32))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.controlnet_down_blocks.parameters():  # zero-initialised: give it an effect
            p.normal_(0, 0.5)
        for p in net.controlnet_mid_block.parameters():
            p.normal_(0, 0.5)
    net.save_pretrained(tmp_path / "cn")
    folder, masks = _masks_folder(tmp_path)
    spec = _spec({"path": str(folder)}, backend="controlnet", controlnet=str(tmp_path / "cn"),
                 palette={"cat": [255, 0, 0], "dog": [0, 0, 255]})
    samples = list(EngineSession(spec).generate(range(2)))
    np.testing.assert_array_equal(samples[0].semantic, masks["a.png"])
    assert samples[0].record.parameters["mask2image"]["backend"] == "controlnet"
    off = _spec({"path": str(folder)}, backend="controlnet", controlnet=str(tmp_path / "cn"), conditioning_scale=0.0)
    plain = list(EngineSession(off).generate([0]))
    assert plain[0].image.tobytes() != samples[0].image.tobytes()


def _tiny_controlnet(folder, safe_serialization=True):
    from diffusers import ControlNetModel

    from worker.engine.loading import load_model

    net = ControlNetModel.from_unet(load_model("builtin:tiny-random").unet, conditioning_embedding_out_channels=(16, 32))
    net.save_pretrained(folder, safe_serialization=safe_serialization)
    return folder


def test_an_uploaded_controlnet_is_resolved_and_loaded_from_safetensors_only(tmp_path, monkeypatch):
    """`controlnet: upload:<id>` goes through the session's upload fetcher (an archive wraps the folder);
    the weights come from safetensors (use_safetensors=True), a .bin is never unpickled."""
    from diffusers import ControlNetModel

    from worker.engine.methods.mask2image import load_controlnet

    _tiny_controlnet(tmp_path / "up" / "wrapped" / "cn")
    folder, masks = _masks_folder(tmp_path)
    calls = []
    real = ControlNetModel.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        calls.append((str(path), kwargs.get("use_safetensors")))
        return real(cls, path, **kwargs)

    monkeypatch.setattr(ControlNetModel, "from_pretrained", classmethod(spy))
    load_controlnet.cache_clear()
    upload_id = "c" * 32
    fetched = []
    spec = _spec({"path": str(folder)}, backend="controlnet", controlnet=f"upload:{upload_id}")
    session = EngineSession(spec, uploads=lambda i: fetched.append(i) or tmp_path / "up" / "wrapped")
    samples = list(session.generate(range(1)))
    np.testing.assert_array_equal(samples[0].semantic, masks["a.png"])
    assert fetched == [upload_id] and calls == [(str(tmp_path / "up" / "wrapped" / "cn"), True)]
    # an uploaded folder with only pickled weights: refused before diffusers reads anything
    _tiny_controlnet(tmp_path / "pickle" / "cn", safe_serialization=False)
    assert not list((tmp_path / "pickle" / "cn").glob("*.safetensors"))
    calls.clear()
    load_controlnet.cache_clear()
    session = EngineSession(spec, uploads=lambda i: tmp_path / "pickle")
    with pytest.raises(SpecError, match="no diffusion_pytorch_model.safetensors") as err:
        list(session.generate(range(1)))
    assert err.value.field == "mask2image.controlnet" and calls == []
    # the CLI with a local folder may still read a .bin (the user's own file)
    load_controlnet.cache_clear()
    local = _spec({"path": str(folder)}, backend="controlnet", controlnet=str(tmp_path / "pickle" / "cn"))
    assert len(list(EngineSession(local).generate(range(1)))) == 1 and calls[-1][1] is None


def test_a_dataset_source_needs_the_service(tmp_path):
    with pytest.raises(SpecError, match="source.dataset: dataset versions are read by the service") as err:
        EngineSession(_spec({"dataset": "cats", "version": 1}))
    assert err.value.field == "mask2image.source.dataset"


def test_spec_errors_name_the_field():
    with pytest.raises(SpecError, match="mask2image: method 'mask2image' needs"):
        parse_spec({"model": "m", "method": "mask2image", "classes": [{"name": "a"}], "num_images": 1})
    with pytest.raises(SpecError, match="exactly one of path"):
        _spec({"path": "x", "upload": "0" * 32})
    with pytest.raises(SpecError, match="controlnet: backend 'controlnet' needs"):
        _spec({"path": "x"}, backend="controlnet")
    with pytest.raises(SpecError, match="source.upload: uploads are read by the service"):
        EngineSession(_spec({"upload": "a" * 32}))


def test_hardness_resampling_and_the_segmenter_filter_in_a_session(tmp_path):
    from worker.labels.segmenter import Segmenter, SmallUNet, load_segmenter

    Segmenter(SmallUNet(3, 8), ["cat", "dog"], 32, {"background": 0.1, "cat": 1.0, "dog": 3.0}).save(tmp_path / "seg")
    load_segmenter.cache_clear()
    folder, _ = _masks_folder(tmp_path)
    spec = parse_spec({
        **_spec({"path": str(folder)}).model_dump(mode="json"),
        "num_images": 7,
        "mask2image": {"source": {"path": str(folder)}, "resample": {"segmenter": str(tmp_path / "seg"), "max_variants": 4}},
        "labels": {"filter": {"segmenter": str(tmp_path / "seg"), "min_kept": 0.0}},
    })
    session = EngineSession(spec)
    # a.png (cat + dog) is harder than b.png (dog only): ranks 1 and 0 of 2 -> 4 and 3 variants.
    assert session.method.schedule == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    s = list(session.generate([0]))[0]
    assert 0.0 <= s.record.quality["segmenter_filter"]["kept"] <= 1.0
    assert ((s.semantic == 255) | (s.semantic == np.asarray(Image.open(folder / "a.png")))).all()


def test_image2image_reads_an_uploaded_archive(tmp_path, shapes_dir):
    import shutil

    up = tmp_path / "uploads" / ("b" * 32)
    shutil.copytree(shapes_dir / "coco", up / "wrapped" / "coco")  # archives often wrap one folder
    spec = parse_spec({
        "model": "builtin:tiny-random", "method": "image2image", "classes": [{"name": s} for s in SHAPES],
        "num_images": 2, "labels": {"mode": "none"},
        "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2},
        "image2image": {"upload": "b" * 32, "images": "coco/images/train", "coco": "coco/annotations/instances_train.json"},
    })
    samples = list(EngineSession(spec, uploads=lambda i: tmp_path / "uploads" / i).generate(range(2)))
    assert all(s.record.parameters["image2image"]["source"].endswith(".png") for s in samples)


def test_image2image_reads_a_dataset_version(shapes_dir):
    """image2image: {dataset, version}: the session's dataset fetcher gives a dsgen folder; its samples'
    images are the sources (in index order), each with its record's prompt as the caption."""
    asked = []
    spec = parse_spec({
        "model": "builtin:tiny-random", "method": "image2image", "classes": [{"name": s} for s in SHAPES],
        "num_images": 2, "labels": {"mode": "none"},
        "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2},
        "image2image": {"dataset": "shapes", "version": 2},
    })
    session = EngineSession(spec, datasets=lambda name, version, field: asked.append((name, version, field)) or shapes_dir)
    samples = list(session.generate(range(2)))
    assert asked == [("shapes", 2, "image2image.dataset")]
    assert [s.record.parameters["image2image"]["source"] for s in samples] == \
        ["samples/000000/image.png", "samples/000001/image.png"]
    caption = json.loads((shapes_dir / "samples" / "000001" / "record.json").read_text())["prompt"]
    assert samples[1].record.prompt.startswith(caption)  # the source caption (plus the class words)
    with pytest.raises(SpecError, match="image2image.dataset: dataset versions are read by the service"):
        EngineSession(spec)


def test_modifiers_bind_to_their_class_word_and_stop_at_the_phrase():
    from shared.formats.prompts import ClassMention
    from worker.engine.methods.mask2image import with_modifiers

    prompt = "a red circle and a big blue square, green star; circle"
    def span(word, start=0):
        i = prompt.index(word, start)
        return (i, i + len(word))
    mentions = (ClassMention("circle", 1, (span("circle"), span("circle", 40))), ClassMention("square", 2, (span("square"),)),
                ClassMention("star", 4, (span("star"),)))
    bound = {m.name: [prompt[a:b] for a, b in m.spans] for m in with_modifiers(prompt, mentions)}
    assert bound == {"circle": ["red circle", "circle"], "square": ["big blue square"], "star": ["green star"]}


def test_a_concept_token_binds_to_its_class_word_like_any_modifier():
    """A learned token ("<cyan>") is one word: kept inside its class's region with the class word
    (splitting it at '<' once left it out, so a concept's colour was drawn anywhere)."""
    from shared.formats.prompts import ClassMention
    from worker.engine.methods.mask2image import with_modifiers

    prompt = "a <cyan> square and a big <my-part>, <x>, circle"
    def span(word):
        i = prompt.index(word)
        return (i, i + len(word))
    mentions = (ClassMention("square", 1, (span("square"),)), ClassMention("part", 2, (span("<my-part>"),)),
                ClassMention("circle", 3, (span("circle"),)))
    bound = {m.name: [prompt[a:b] for a, b in m.spans] for m in with_modifiers(prompt, mentions)}
    assert bound == {"square": ["<cyan> square"], "part": ["big <my-part>"], "circle": ["circle"]}


def test_bound_modifiers_are_rectified_with_their_class(shapes_dir):
    """With bind_modifiers the colour word's tokens are kept inside the class region too."""
    from worker.engine.controls import RectifiedCrossAttention

    def control(bind: bool) -> RectifiedCrossAttention:
        spec = parse_spec({
            "model": "builtin:shapes-v2", "method": "mask2image",
            "classes": [{"name": "circle"}, {"name": "square"}, {"name": "triangle"}, {"name": "star"}],
            "num_images": 1, "labels": {"mode": "none"},
            "generation": {"width": 32, "height": 32, "steps": 1, "batch_size": 1},
            "mask2image": {"source": {"path": str(shapes_dir)}, "prompt": "source", "bind_modifiers": bind},
        })
        session = EngineSession(spec)
        (inputs,) = session.method.batch_inputs([session.plan(0)])
        return inputs.controls[0], session.plan(0)

    (plain, _), (bound, _) = control(False), control(True)
    assert len(bound.class_tokens[0]) == 2 * len(plain.class_tokens[0])  # "a red circle": colour + shape tokens
    assert set(plain.class_tokens[0]) < set(bound.class_tokens[0])
