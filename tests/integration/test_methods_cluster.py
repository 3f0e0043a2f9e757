"""edit, layout and augment end to end: a real source uploaded over REST, the jobs run by Celery
workers reading it from S3, records and labels as each method promises, exports written."""
from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.shapes.dataset import write_real_dataset

from cluster_support import wait_for
from test_sources_cluster import SHAPES, upload, zip_folder

pytestmark = pytest.mark.slow
GEN = {"width": 32, "height": 32, "steps": 2, "batch_size": 2}


@pytest.fixture(scope="module")
def real_source(api, headers, tmp_path_factory):
    real = tmp_path_factory.mktemp("methods") / "real"
    write_real_dataset(real, 3, seed=21, size=32, formats=["coco"])
    return real, upload(api, headers, zip_folder(real))


def run_job(api, headers, cluster, spec: dict) -> tuple[dict, list[dict]]:
    r = api.post("/v1/jobs", json={"classes": [{"name": s} for s in SHAPES], "model": "builtin:tiny-random",
                                   "seed": 5, "generation": GEN, **spec}, headers=headers)
    assert r.status_code == 201, r.text
    done = wait_for(api, headers, r.json()["id"], cluster=cluster)
    assert done["status"] == "succeeded", (done.get("error"), done)
    samples = api.get(f"/v1/jobs/{done['id']}/samples", headers=headers).json()["items"]
    assert len(samples) == spec["num_images"]
    exports = api.get(f"/v1/jobs/{done['id']}/exports", headers=headers).json()["items"]
    assert sorted(e["format"] for e in exports) == sorted(spec["export"]["formats"])
    return done, samples


def fetch_png(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(httpx.get(url).content)))


def test_edit_keeps_the_source_masks_as_labels_and_names_its_prompts(cluster, api, headers, real_source):
    real, source = real_source
    _, samples = run_job(api, headers, cluster, {
        "name": "edit", "method": "edit", "num_images": 3, "export": {"formats": ["coco", "masks"]},
        "edit": {"source": {"upload": source["id"]}, "inside": ["a blue {class}"], "objects": "largest"}})
    for s in samples:
        params = s["lineage"]["parameters"]["edit"]
        assert params["inside_prompt"].startswith("a blue ") and params["class"] in SHAPES
        index = int(params["source_mask"].split("/")[1])
        truth = np.asarray(Image.open(real / "samples" / f"{index:06d}" / "semantic.png"))
        assert (fetch_png(s["urls"]["semantic"]) == truth).all()


def test_layout_boxes_are_the_asked_boxes(cluster, api, headers):
    _, samples = run_job(api, headers, cluster, {
        "name": "layout", "method": "layout", "num_images": 2, "export": {"formats": ["coco"]},
        "layout": {"objects": [{"class": "circle", "box": [0.1, 0.1, 0.5, 0.5]}], "scale": 1.0}})
    for s in samples:
        asked = s["lineage"]["parameters"]["layout"]["objects"]
        assert [o["class"] for o in asked] == ["circle"]
        x, y, w, h = asked[0]["box"]
        assert (x, y) == (pytest.approx(3.2, abs=1), pytest.approx(3.2, abs=1)) and w == pytest.approx(12.8, abs=1)
        semantic = fetch_png(s["urls"]["semantic"])
        ys, xs = np.nonzero((semantic > 0) & (semantic < 255))
        if len(xs):  # masks come from attention inside the asked box: never outside it
            assert xs.min() >= x - 1 and xs.max() <= x + w + 1 and ys.min() >= y - 1 and ys.max() <= y + h + 1


def test_augment_marks_its_samples_synthetic_with_their_source(cluster, api, headers, real_source):
    real, source = real_source
    _, samples = run_job(api, headers, cluster, {
        "name": "augment", "method": "augment", "num_images": 6, "export": {"formats": ["coco", "masks"]},
        "augment": {"source": {"upload": source["id"]}, "variants": 2, "mode": "inpaint_inside",
                    "strengths": [0.5], "template": "a {classes}"}})
    seen = set()
    for s in samples:
        params = s["lineage"]["parameters"]
        assert params["synthetic"] is True and params["augment"]["labels"] == "carried"
        seen.add(params["augment"]["source_index"])
        index = int(params["augment"]["source_mask"].split("/")[1])
        truth = np.asarray(Image.open(real / "samples" / f"{index:06d}" / "semantic.png"))
        assert (fetch_png(s["urls"]["semantic"]) == truth).all()  # inpainted inside: labels carried over
    assert seen == {0, 1, 2}


def test_layout_shapes_come_from_an_uploaded_source_and_are_the_labels(cluster, api, headers, tmp_path):
    real = tmp_path / "shapes"
    write_real_dataset(real, 12, seed=4, size=32, formats=["coco"])
    source = upload(api, headers, zip_folder(real))
    _, samples = run_job(api, headers, cluster, {
        "name": "layout-shapes", "method": "layout", "num_images": 2, "export": {"formats": ["coco"]},
        "layout": {"objects": [{"class": "circle", "box": [0.1, 0.1, 0.6, 0.6]}], "scale": 1.0, "box_mask": True,
                   "shapes": {"upload": source["id"]}}})
    for s in samples:
        params = s["lineage"]["parameters"]["layout"]
        assert params["labels"] == "layout (masks are the shapes fitted into the asked boxes)"
        (name,) = params["shapes"]
        assert (real / name).is_file()  # a mask of the uploaded source
        x, y, w, h = params["objects"][0]["box"]
        ys, xs = np.nonzero(fetch_png(s["urls"]["semantic"]) == 1)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)  # it fills the asked box
        assert len(xs) < 0.95 * w * h  # with a circle's shape, not the box's


def test_a_concept_uploaded_over_rest_is_loaded_by_the_workers(cluster, api, headers, tmp_path):
    from worker.engine.concept_training import LearnConfig, learn_concept
    from worker.engine.loading import load_model

    images = []
    for i in range(2):
        a = np.zeros((32, 32, 3), np.uint8)
        a[8:24, 8 + i:24 + i] = (20, 205, 215)
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(images[-1])
    folder = tmp_path / "thing-concept"
    learn_concept(load_model("builtin:tiny-random"), images,
                  LearnConfig(tokens=["<thing>"], init_words=["the"], steps=2, batch_size=2, lr=1e-2), folder)
    concept = upload(api, headers, zip_folder(folder))
    assert concept["format"] == "concept" and concept["concept"]["tokens"] == ["<thing>"]
    _, samples = run_job(api, headers, cluster, {
        "name": "concept", "num_images": 2, "export": {"formats": ["coco"]},
        "classes": [{"name": "thing", "words": ["<thing>"]}], "prompts": {"templates": ["a {class}"]},
        "concepts": [f"upload:{concept['id']}"]})
    for s in samples:
        assert s["prompt"] == "a <thing>"
        (used,) = s["lineage"]["parameters"]["concepts"]
        assert used["tokens"] == ["<thing>"] and used["steps"] == 2
