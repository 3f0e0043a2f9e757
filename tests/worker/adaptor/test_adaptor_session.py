"""Adaptor labels through EngineSession on builtin:tiny-random: records, drops, COCO, both, image2image."""
import json

import numpy as np
import pytest
from helpers import saved_tiny_adaptor
from pycocotools.coco import COCO
from tiny_data import write_tiny_coco

from shared.formats.spec import SpecError, parse_spec
from worker.engine.loading import load_model
from worker.engine.local_run import run_to_folder
from worker.engine.session import EngineSession

BASE = {
    "model": "builtin:tiny-random",
    "classes": [{"name": "cat"}, {"name": "dog"}],
    "prompts": {"templates": ["a {class} and a {class_2}", "a photo of a {class}"]},
    "num_images": 4,
    "seed": 5,
    "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2},
}


@pytest.fixture(scope="module")
def adaptor_dir(tmp_path_factory):
    return saved_tiny_adaptor(load_model("builtin:tiny-random"), ["cat", "dog"], tmp_path_factory.mktemp("ad") / "ad", seed=2)


def spec(adaptor_dir, method=None, **labels):
    data = {**BASE, "labels": {"adaptor": str(adaptor_dir), "min_component_area": 4, **labels}}
    if method:
        data.update(method)
    return parse_spec(data)


def test_adaptor_boxes_are_box_only_annotations(adaptor_dir):
    samples = list(EngineSession(spec(adaptor_dir, boxes="adaptor")).generate(range(4)))
    assert [s.record.index for s in samples] == [0, 1, 2, 3]
    for s in samples:
        r = s.record
        assert s.semantic is None and s.instances is None and r.files.semantic is None
        assert r.annotations and all(a.source == "adaptor" and a.rle is None for a in r.annotations)
        assert all(a.score > 0.3 and a.category in ("cat", "dog") for a in r.annotations)
        assert r.quality["adaptor"]["boxes"] == len(r.annotations) and "dropped" not in r.quality
        assert r.parameters["labels"]["boxes"] == "adaptor"
        assert set(s.files()) == {"image.png", "record.json"}


def test_dropped_samples_keep_records_but_leave_the_exports_and_coco_loads(adaptor_dir, tmp_path):
    strict = spec(adaptor_dir, boxes="adaptor", adaptor_score_threshold=0.99)
    samples = list(EngineSession(strict).generate(range(4)))
    assert all(s.record.quality["dropped"].startswith("no adaptor box") for s in samples)
    kept = spec(adaptor_dir, boxes="adaptor", adaptor_score_threshold=0.99, keep_empty=True)
    assert all("dropped" not in s.record.quality for s in EngineSession(kept).generate(range(2)))

    report = run_to_folder(spec(adaptor_dir, boxes="adaptor"), tmp_path / "ds")
    n_anns = 0
    for f in sorted((tmp_path / "ds" / "coco" / "annotations").glob("*.json")):
        coco = COCO(str(f))
        for ann in coco.loadAnns(coco.getAnnIds()):
            assert ann["score"] > 0.3 and "segmentation" not in ann and len(ann["bbox"]) == 4
            n_anns += 1
    assert n_anns == sum(len(json.loads((tmp_path / "ds" / "samples" / f"{i:06d}" / "record.json").read_text())["annotations"])
                         for i in range(4))
    assert report.generated == 4
    empty = run_to_folder(strict, tmp_path / "empty")
    assert not list((tmp_path / "empty" / "coco").rglob("*.json"))  # every sample dropped
    assert len(list((tmp_path / "empty" / "samples").glob("*/record.json"))) == 4 and empty.manifest.is_file()


def test_both_keeps_attention_masks_and_matches_adaptor_boxes(adaptor_dir):
    both = {s.record.index: s for s in EngineSession(spec(adaptor_dir, boxes="both", match_iou=0.05)).generate(range(4))}
    attention = {s.record.index: s for s in EngineSession(parse_spec({**BASE, "labels": {"min_component_area": 4}})).generate(range(4))}
    matched = 0
    for i, s in both.items():
        assert np.array_equal(s.semantic, attention[i].semantic)
        masks = [a for a in s.record.annotations if a.rle is not None]
        assert len(masks) == len(attention[i].record.annotations)  # every attention instance kept
        matched += sum(a.source == "adaptor" for a in masks)
        assert s.record.quality["adaptor"]["matched"] == sum(a.source == "adaptor" for a in masks)
    assert matched > 0


def test_spec_errors_name_the_field(adaptor_dir, tmp_path):
    with pytest.raises(SpecError, match=r"^labels.boxes: 'both' keeps attention masks"):
        parse_spec({**BASE, "labels": {"boxes": "both", "mode": "none"}})
    with pytest.raises(SpecError, match=r"^labels.adaptor_score_threshold"):
        parse_spec({**BASE, "labels": {"boxes": "adaptor", "adaptor_score_threshold": 1.5}})
    with pytest.raises(SpecError, match=r"^labels.adaptor: set labels.boxes"):
        parse_spec({**BASE, "labels": {"adaptor": "x"}})
    with pytest.raises(SpecError, match=r"^image2image: method 'image2image' needs"):
        parse_spec({**BASE, "method": "image2image"})
    with pytest.raises(SpecError, match=r"^image2image.strength"):
        parse_spec({**BASE, "method": "image2image", "image2image": {"images": "x", "strength": [0.9, 0.4]}})
    with pytest.raises(SpecError, match="labels.adaptor: .*ships none") as err:
        EngineSession(parse_spec({**BASE, "labels": {"boxes": "adaptor"}}))
    assert err.value.field == "labels.adaptor"
    other = saved_tiny_adaptor(load_model("builtin:tiny-random"), ["cat"], tmp_path / "other",
                               base={"id": "builtin:shapes-v1", "revision": "r1"})
    with pytest.raises(SpecError, match="trained for model 'builtin:shapes-v1'.*job uses 'builtin:tiny-random'"):
        EngineSession(spec(other, boxes="adaptor"))
    wrong = saved_tiny_adaptor(load_model("builtin:tiny-random"), ["horse"], tmp_path / "horse")
    with pytest.raises(SpecError, match="none of the job's classes"):
        EngineSession(spec(wrong, boxes="adaptor"))


def test_image2image_is_deterministic_and_records_strength(adaptor_dir, tmp_path):
    coco, images = write_tiny_coco(tmp_path / "src", n=3)
    method = {"method": "image2image", "image2image": {"images": str(images), "coco": str(coco), "strength": [0.4, 0.8]},
              "generation": {**BASE["generation"], "steps": 4}}
    by2 = {s.record.index: s for s in EngineSession(spec(adaptor_dir, method, boxes="adaptor", keep_empty=True)).generate(range(4))}
    method1 = {**method, "generation": {**method["generation"], "batch_size": 1}}
    by1 = {s.record.index: s for s in EngineSession(spec(adaptor_dir, method1, boxes="adaptor", keep_empty=True)).generate(range(4))}
    strengths = []
    for i in range(4):
        p = by2[i].record.parameters["image2image"]
        assert 0.4 <= p["strength"] <= 0.8 and p["source"] == f"{i % 3:03d}.png"
        assert p == by1[i].record.parameters["image2image"]
        assert by2[i].record.prompt.startswith("a ")  # the source's caption
        a, b = np.asarray(by2[i].image, dtype=int), np.asarray(by1[i].image, dtype=int)
        assert np.abs(a - b).max() <= 1
        strengths.append(p["strength"])
    assert len(set(strengths)) > 1
