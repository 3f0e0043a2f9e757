"""method augment (DA-Fusion): variants per source, strengths from a set, inpainting by masked
blending, labels carried over or re-derived (and the record says which)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shared.formats.spec import SpecError, parse_spec
from shared.shapes.dataset import write_real_dataset
from worker.engine.session import EngineSession

torch.set_num_threads(1)
SHAPES = ("circle", "square", "triangle", "star")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_real_dataset(out, 2, seed=5, size=32, formats=["coco"])
    return out


def _spec(root, model="builtin:shapes-v1", num=4, **aug):
    return parse_spec({
        "model": model, "method": "augment", "seed": 3, "num_images": num,
        "classes": [{"name": s} for s in SHAPES],
        "generation": {"width": 32, "height": 32, "steps": 4, "batch_size": 4, "guidance_scale": 2.0, "scheduler": "ddim"},
        "labels": {"mode": "refined", "cross_resolutions": [16, 32]},
        "augment": {"source": {"path": str(root), "format": "dsgen"}, "template": "a {classes}", **aug},
    })


def _truth(root, i):
    return np.asarray(Image.open(root / "samples" / f"{i:06d}" / "semantic.png"))


def _real(root, i):
    return np.asarray(Image.open(root / "samples" / f"{i:06d}" / "image.png").convert("RGB"))


def test_variants_strengths_and_lineage(shapes_dir):
    spec = _spec(shapes_dir, num=8, variants=4)
    samples = list(EngineSession(spec).generate(range(8)))
    aug = [s.record.parameters["augment"] for s in samples]
    assert [a["source_index"] for a in aug] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [a["variant"] for a in aug] == [0, 1, 2, 3] * 2
    assert {a["strength"] for a in aug} <= {0.25, 0.5, 0.75, 1.0} and len({a["strength"] for a in aug}) > 1
    assert all(s.record.parameters["synthetic"] for s in samples)
    assert aug[0]["source_image"] == "samples/000000/image.png"
    # labels: carried at low strength, from attention above keep_labels_below
    for s, a in zip(samples, aug):
        assert a["labels"] == ("carried" if a["strength"] <= 0.5 else "attention")
        if a["labels"] == "carried":
            assert np.array_equal(s.semantic, _truth(shapes_dir, a["source_index"]))
    # the prompt names the source's classes
    assert all(c in SHAPES for s in samples for c in s.record.classes)
    # deterministic: the same sample again, alone, is the same bytes
    again = next(EngineSession(spec).generate([5]))
    assert np.array_equal(np.asarray(again.image), np.asarray(samples[5].image))


def test_inpaint_inside_keeps_the_background_and_carries_labels(shapes_dir):
    samples = list(EngineSession(_spec(shapes_dir, num=2, variants=2, mode="inpaint_inside", strengths=[1.0])).generate(range(2)))
    truth, real = _truth(shapes_dir, 0), _real(shapes_dir, 0)
    for s in samples:
        assert s.record.parameters["augment"]["labels"] == "carried"
        img = np.asarray(s.image).astype(int)
        bg = truth == 0
        assert np.abs(img[bg] - real[bg]).max() <= 1  # pixel-space model: the kept region is the source
        assert np.abs(img[~bg] - real[~bg]).mean() > 5  # inside the objects it was re-drawn
        assert np.array_equal(s.semantic, truth)


def test_inpaint_outside_keeps_the_objects(shapes_dir):
    s = next(EngineSession(_spec(shapes_dir, num=1, variants=1, mode="inpaint_outside", strengths=[1.0])).generate([0]))
    truth, real, img = _truth(shapes_dir, 0), _real(shapes_dir, 0), np.asarray(s.image).astype(int)
    obj = truth > 0
    assert np.abs(img[obj] - real[obj]).max() <= 1 and np.abs(img[~obj] - real[~obj]).mean() > 2


def test_latent_model_inpainting_runs(shapes_dir):
    spec = parse_spec({
        "model": "builtin:tiny-random", "method": "augment", "num_images": 2, "classes": [{"name": s} for s in SHAPES],
        "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2},
        "augment": {"source": {"path": str(shapes_dir), "format": "dsgen"}, "variants": 1, "mode": "inpaint_inside", "grow": 2},
    })
    samples = list(EngineSession(spec).generate(range(2)))
    assert [s.record.parameters["augment"]["source_index"] for s in samples] == [0, 1]
    assert samples[0].record.prompt.startswith("a photo of a ")


def test_spec_errors_name_the_field(shapes_dir):
    with pytest.raises(SpecError, match="augment"):
        parse_spec({"model": "builtin:tiny-random", "method": "augment", "num_images": 1, "classes": [{"name": "a"}]})
    with pytest.raises(SpecError) as err:
        parse_spec({"model": "builtin:tiny-random", "method": "augment", "num_images": 1, "classes": [{"name": "a"}],
                    "augment": {"source": {"path": "x"}, "strengths": [0.0]}})
    assert err.value.field == "augment.strengths"
    with pytest.raises(SpecError) as err:
        EngineSession(_spec(shapes_dir.parent / "missing"))
    assert err.value.field.startswith("augment.source")


def test_source_prompt_is_the_captions_with_its_classes_found(shapes_dir):
    import json

    session = EngineSession(_spec(shapes_dir, num=4, variants=2, prompt="source"))
    for i in range(4):
        plan = session.plan(i)
        record = json.loads((shapes_dir / "samples" / f"{i // 2:06d}" / "record.json").read_text())
        assert plan.prompt == record["prompt"]  # every class is named in a render's caption: nothing appended
        assert {m.name for m in plan.mentions} == set(record["classes"])
        assert all(plan.prompt[a:b] == m.name for m in plan.mentions for a, b in m.spans)


def test_rectify_keeps_each_class_word_inside_its_source_objects(shapes_dir):
    from worker.engine.controls import RectifiedCrossAttention

    session = EngineSession(_spec(shapes_dir, model="builtin:shapes-v2", num=2, variants=1, mode="inpaint_inside",
                                  strengths=[0.5], prompt="source", rectify=True))
    plans = [session.plan(i) for i in range(2)]
    batches = session.method.batch_inputs(plans)
    controls = [c for b in batches for c in b.controls]
    assert controls and all(isinstance(c, RectifiedCrossAttention) for c in controls)
    for b in batches:
        (control,) = b.controls
        categories = {k for tokens in control.class_tokens for _, k in tokens}
        truth = set(np.unique(np.concatenate([_truth(shapes_dir, plans[m].index) for m in b.members]))) - {0, 255}
        assert categories == truth  # one rectified class per class present in the sources
    (sample,) = EngineSession(session.spec).generate([0])
    assert sample.record.parameters["augment"]["rectify"] is True
    assert np.array_equal(sample.semantic, _truth(shapes_dir, 0))  # labels carried over
