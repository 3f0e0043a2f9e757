"""mask2image end to end: a source archive and a segmenter uploaded over REST, run by Celery
workers reading both from S3, the FreeMask filter applied, exports written."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.shapes.dataset import write_real_dataset

from cluster_support import wait_for

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
    from worker.engine.segmenter import Segmenter, SmallUNet

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
