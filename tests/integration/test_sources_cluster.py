"""mask2image end to end: a source archive and a segmenter uploaded over REST, run by Celery
workers reading both from S3, the FreeMask filter applied, exports written."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from cluster_support import wait_for
from PIL import Image

from shared.shapes.dataset import write_real_dataset

pytestmark = pytest.mark.slow
SHAPES = ["circle", "square", "triangle", "star"]


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{folder.name}/{p.relative_to(folder)}")
    return buf.getvalue()


def upload(api, headers, data: bytes) -> dict:
    r = api.post("/v1/sources", content=data, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def test_mask2image_from_an_uploaded_source_with_the_segmenter_filter(cluster, api, headers, tmp_path):
    from worker.labels.segmenter import Segmenter, SmallUNet

    real = tmp_path / "real"
    write_real_dataset(real, 4, seed=11, size=32, formats=["coco"])
    source = upload(api, headers, zip_folder(real))
    assert source["format"] == "dsgen"
    Segmenter(SmallUNet(5, 8), SHAPES, 32, {"background": 0.5, **{s: 1.0 for s in SHAPES}}).save(tmp_path / "seg")
    seg = upload(api, headers, zip_folder(tmp_path / "seg"))
    assert seg["format"] == "segmenter"

    hostile = io.BytesIO()
    with zipfile.ZipFile(hostile, "w") as zf:
        zf.writestr("../../outside.png", b"x")
    r = api.post("/v1/sources", content=hostile.getvalue(), headers=headers)
    assert r.status_code == 422 and "outside the archive" in r.json()["detail"]

    spec = {"name": "m2i", "model": "builtin:tiny-random", "method": "mask2image",
            "classes": [{"name": s} for s in SHAPES], "num_images": 8, "seed": 3,
            "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2},
            "mask2image": {"source": {"upload": source["id"]}, "variants": 2},
            "labels": {"filter": {"segmenter": f"upload:{seg['id']}", "min_kept": 0.0}},
            "export": {"formats": ["coco", "masks"]}}
    r = api.post("/v1/jobs", json=spec, headers=headers)
    assert r.status_code == 201, r.text
    done = wait_for(api, headers, r.json()["id"], cluster=cluster)
    assert done["status"] == "succeeded", (done.get("error"), done)
    samples = api.get(f"/v1/jobs/{done['id']}/samples", headers=headers).json()["items"]
    assert len(samples) == 8
    for s in samples:
        params = s["lineage"]["parameters"]["mask2image"]
        index = int(params["source_mask"].split("/")[1])
        assert params["variant"] == s["index"] % 2 and index == s["index"] // 2
        assert "segmenter_filter" in s["quality"]
        truth = np.asarray(Image.open(real / "samples" / f"{index:06d}" / "semantic.png"))
        got = np.asarray(Image.open(io.BytesIO(httpx.get(s["urls"]["semantic"]).content)))
        assert ((got == truth) | (got == 255)).all()  # the input mask, minus what the filter ignored
    exports = api.get(f"/v1/jobs/{done['id']}/exports", headers=headers).json()
    assert sorted(e["format"] for e in exports["items"]) == ["coco", "masks"]


M2I = {"model": "builtin:tiny-random", "method": "mask2image", "classes": [{"name": s} for s in SHAPES], "seed": 3,
       "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2}, "export": {"formats": ["coco"]}}


def run(api, headers, cluster, spec: dict, dataset: str | None = None) -> tuple[dict, list[dict]]:
    r = api.post("/v1/jobs", json=spec, headers=headers, params={"dataset": dataset} if dataset else None)
    assert r.status_code == 201, r.text
    done = wait_for(api, headers, r.json()["id"], cluster=cluster)
    assert done["status"] == "succeeded", (done.get("error"), done)
    samples = api.get(f"/v1/jobs/{done['id']}/samples", headers=headers).json()["items"]
    assert len(samples) == spec["num_images"]
    return done, samples


def test_mask2image_reads_a_dataset_version_an_earlier_job_made(cluster, api, headers, tmp_path):
    """Job 1 (an uploaded source, ?dataset=NAME) becomes v1; job 2 names `source: {dataset: NAME}`:
    'latest' is pinned to 1 at submit, the worker materialises v1's samples from S3 as a dsgen folder,
    and job 2's labels are job 1's masks. Another tenant cannot name the dataset."""
    from cluster_support import make_key

    real = tmp_path / "real"
    write_real_dataset(real, 2, seed=12, size=32, formats=["coco"])
    source = upload(api, headers, zip_folder(real))
    name = f"m2i-{source['id'][:8]}"
    first, first_samples = run(api, headers, cluster, {**M2I, "name": "v1", "num_images": 2,
                                                       "mask2image": {"source": {"upload": source["id"]}}}, dataset=name)
    assert first["version"] == 1
    other = make_key(cluster)
    spec = {**M2I, "name": "from-v1", "num_images": 4, "mask2image": {"source": {"dataset": name}, "variants": 2}}
    r = api.post("/v1/jobs", json=spec, headers=other)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.source.dataset", r.text
    second, samples = run(api, headers, cluster, spec)
    assert second["spec"]["mask2image"]["source"]["version"] == 1
    truth = {s["index"]: fetch(s["urls"]["semantic"]) for s in first_samples}
    assert len({t.tobytes() for t in truth.values()}) == 2  # two different masks: the schedule is checked
    for s in samples:
        params = s["lineage"]["parameters"]["mask2image"]
        assert params["source_mask"] == f"samples/{s['index'] // 2:06d}/semantic.png"
        assert (fetch(s["urls"]["semantic"]) == truth[s["index"] // 2]).all()
    # image2image starts from the same version's images
    i2i = {**M2I, "name": "i2i-from-v1", "method": "image2image", "num_images": 2,
           "image2image": {"dataset": name, "version": "v1", "strength": [0.5, 0.5]}}
    i2i.pop("mask2image", None)
    _, samples = run(api, headers, cluster, i2i)
    assert sorted(s["lineage"]["parameters"]["image2image"]["source"] for s in samples) == \
        ["samples/000000/image.png", "samples/000001/image.png"]


def fetch(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(httpx.get(url).content)))


def test_mask2image_with_an_uploaded_controlnet(cluster, api, headers, tmp_path):
    """backend controlnet over the API: a tiny ControlNet (built from tiny-random's UNet config, saved as
    safetensors) zipped and uploaded, named as upload:<id>, loaded by the worker from S3."""
    from diffusers import ControlNetModel

    from worker.engine.loading import load_model

    net = ControlNetModel.from_unet(load_model("builtin:tiny-random").unet, conditioning_embedding_out_channels=(16, 32))
    net.save_pretrained(tmp_path / "cn", safe_serialization=True)
    cn = upload(api, headers, zip_folder(tmp_path / "cn"))
    assert cn["format"] == "controlnet"
    real = tmp_path / "real"
    write_real_dataset(real, 2, seed=13, size=32, formats=["coco"])
    source = upload(api, headers, zip_folder(real))
    spec = {**M2I, "name": "controlnet", "num_images": 2,
            "mask2image": {"source": {"upload": source["id"]}, "backend": "controlnet",
                           "controlnet": f"upload:{cn['id']}"}}
    r = api.post("/v1/jobs", json={**spec, "mask2image": {**spec["mask2image"], "controlnet": str(tmp_path / "cn")}},
                 headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.controlnet"  # a server path: never
    _, samples = run(api, headers, cluster, spec)
    for s in samples:
        assert s["lineage"]["parameters"]["mask2image"]["backend"] == "controlnet"
        index = int(s["lineage"]["parameters"]["mask2image"]["source_mask"].split("/")[1])
        truth = np.asarray(Image.open(real / "samples" / f"{index:06d}" / "semantic.png"))
        assert (fetch(s["urls"]["semantic"]) == truth).all()
