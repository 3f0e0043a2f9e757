"""/v1/sources: upload validation over HTTP, tenant isolation, and specs that name sources."""
from __future__ import annotations

import copy
import io
import json
import random
import tarfile
import uuid
import zipfile

import pytest
from api_spec import SPEC


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def m2i_spec(source: dict) -> dict:
    s = copy.deepcopy(SPEC)
    s.update(method="mask2image", mask2image={"source": source})
    return s


def test_upload_then_name_it_in_a_job(client, headers, other_headers, store):
    r = client.post("/v1/sources", content=zip_of({"masks/a.png": b"\x89PNG"}), headers=headers)
    assert r.status_code == 201, r.text
    view = r.json()
    assert view["format"] == "masks" and view["archive"] == "zip" and view["files"] == 1
    assert client.get(f"/v1/sources/{view['id']}", headers=headers).json() == view
    assert store.exists(f"sources/{view['id']}/archive")
    # Another tenant can neither read it nor name it.
    assert client.get(f"/v1/sources/{view['id']}", headers=other_headers).status_code == 404
    r = client.post("/v1/jobs", json=m2i_spec({"upload": view["id"]}), headers=other_headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.source.upload"
    r = client.post("/v1/jobs", json=m2i_spec({"upload": view["id"]}), headers=headers)
    assert r.status_code == 201, r.text


def test_hostile_archives_get_clear_4xx(client, headers, store):
    cases = [
        (zip_of({"../../etc/cron.d/x.png": b"x"}), 422, "outside the archive"),
        (zip_of({"zeros.png": b"\0" * (8 << 20)}), 413, "zip bomb"),
        (b"not an archive at all", 422, "not a zip, tar or tar.gz"),
        (zip_of({"notes.txt": b"hello"}), 422, "no masks, images"),
    ]
    for body, status, text in cases:
        r = client.post("/v1/sources", content=body, headers=headers)
        assert r.status_code == status, r.text
        assert text in r.json()["detail"] and r.json()["field"] == "archive"
    assert store.list("sources/") == []  # nothing stored for refused archives


def test_oversized_upload_is_413(client, headers, settings, store):
    settings.max_source_bytes = 4096  # the app reads its settings per request
    r = client.post("/v1/sources", content=zip_of({"a.png": b"x" * 10}) + b"\0" * 5000, headers=headers)
    assert r.status_code == 413 and "4096" in r.json()["detail"]
    assert store.list("sources/") == []


def test_specs_over_the_api_name_uploads_never_server_paths(client, headers):
    r = client.post("/v1/jobs", json=m2i_spec({"path": "/etc"}), headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.source.path"
    assert "POST /v1/sources" in r.json()["detail"]
    r = client.post("/v1/jobs", json=m2i_spec({"upload": "0" * 32}), headers=headers)
    assert r.status_code == 422 and "no upload" in r.json()["detail"]
    s = copy.deepcopy(SPEC)
    s["labels"] = {"filter": {"segmenter": "/srv/seg"}}
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "labels.filter.segmenter"


def test_a_segmenter_reference_must_name_a_segmenter_upload(client, headers):
    masks = client.post("/v1/sources", content=zip_of({"masks/a.png": b"\x89PNG"}), headers=headers).json()
    seg = client.post("/v1/sources", content=zip_of({"seg/segmenter.json": b"{}", "seg/segmenter.pt": b"x"}),
                      headers=headers).json()
    assert seg["format"] == "segmenter"
    s = copy.deepcopy(SPEC)
    s["labels"] = {"filter": {"segmenter": f"upload:{masks['id']}"}}
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "labels.filter.segmenter"
    assert "masks layout, not a segmenter folder" in r.json()["detail"]
    s["labels"] = {"filter": {"segmenter": f"upload:{seg['id']}", "reference": "real_quantile"}}
    assert client.post("/v1/jobs", json=s, headers=headers).status_code == 201
    code = zip_of({"seg/segmenter.json": b"{}", "seg/segmenter.torchscript.pt": b"x"})
    r = client.post("/v1/sources", content=code, headers=headers)
    assert r.status_code == 422 and "TorchScript segmenter is code" in r.json()["detail"]


def concept_zip(base_model: str, tokens=("<thing>",)) -> bytes:
    meta = {"format": "dsgen-concept", "version": 1, "tokens": list(tokens),
            "files": {t: t.strip("<>") + ".safetensors" for t in tokens},
            "base_model": {"id": base_model, "revision": "0123456789abcdef"}}
    return zip_of({"concept/concept.json": json.dumps(meta).encode(),
                   **{f"concept/{t.strip('<>')}.safetensors": b"x" for t in tokens}})


def test_a_concept_reference_must_name_a_concept_of_the_jobs_model(client, headers, other_headers):
    masks = client.post("/v1/sources", content=zip_of({"masks/a.png": b"\x89PNG"}), headers=headers).json()
    ours = client.post("/v1/sources", content=concept_zip("builtin:tiny-random"), headers=headers).json()
    assert ours["format"] == "concept"
    # the same folder as a tar.gz reads the same
    with zipfile.ZipFile(io.BytesIO(concept_zip("builtin:tiny-random"))) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    tarred = client.post("/v1/sources", content=buf.getvalue(), headers=headers).json()
    assert (tarred["format"], tarred["archive"], tarred["concept"]) == ("concept", "tar", ours["concept"])
    assert ours["concept"] == {"tokens": ["<thing>"], "base_model": {"id": "builtin:tiny-random", "revision": "0123456789abcdef"}}
    foreign = client.post("/v1/sources", content=concept_zip("builtin:shapes-v2", ("<cyan>",)), headers=headers).json()
    s = copy.deepcopy(SPEC)
    cases = [
        ("upload:" + uuid.uuid4().hex, "no upload"),  # missing
        (f"upload:{masks['id']}", "masks layout, not a concept folder"),
        (f"upload:{foreign['id']}", "was learned on builtin:shapes-v2, not on this job's model builtin:tiny-random; "
                                    "use model 'builtin:shapes-v2' or learn the concept again"),
    ]
    for ref, text in cases:
        s["concepts"] = [f"upload:{ours['id']}", ref]
        r = client.post("/v1/jobs", json=s, headers=headers)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "concepts[1]" and text in r.json()["detail"]
    # another tenant cannot name it
    s["concepts"] = [f"upload:{ours['id']}"]
    r = client.post("/v1/jobs", json=s, headers=other_headers)
    assert r.status_code == 422 and r.json()["field"] == "concepts[0]"
    assert client.post("/v1/jobs", json=s, headers=headers).status_code == 201


def test_a_concept_archive_must_hold_a_dsgen_concept(client, headers, store):
    bad = zip_of({"c/concept.json": b'{"format": "other"}', "c/x.safetensors": b"x"})
    r = client.post("/v1/sources", content=bad, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "archive"
    assert "not a dsgen concept" in r.json()["detail"] and "dsgen concepts learn" in r.json()["detail"]
    huge = zip_of({"c/concept.json": random.Random(0).randbytes(2 << 20), "c/x.safetensors": b"x"})  # incompressible
    r = client.post("/v1/sources", content=huge, headers=headers)
    assert r.status_code == 422 and "at most" in r.json()["detail"]
    twice = zip_of({"a/concept.json": b"{}", "b/concept.json": b"{}", "a/x.safetensors": b"x"})
    r = client.post("/v1/sources", content=twice, headers=headers)
    assert r.status_code == 422 and "twice" in r.json()["detail"]
    assert store.list("sources/") == []


def test_upload_requires_a_key(client):
    assert client.post("/v1/sources", content=zip_of({"a.png": b"x"})).status_code == 401


def test_image2image_over_the_api_names_an_upload(client, headers):
    s = copy.deepcopy(SPEC)
    s.update(method="image2image", image2image={"images": "/srv/photos"})
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "image2image.images"
    up = client.post("/v1/sources", content=zip_of({"photos/a.png": b"\x89PNG"}), headers=headers).json()
    s.update(image2image={"upload": up["id"], "images": "photos"})
    assert client.post("/v1/jobs", json=s, headers=headers).status_code == 201


def test_edit_and_layout_over_the_api(client, headers):
    s = copy.deepcopy(SPEC)
    s.update(method="edit", edit={"source": {"path": "/srv/data"}, "inside": ["a blue {class}"]})
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "edit.source.path"
    up = client.post("/v1/sources", content=zip_of({"masks/a.png": b"\x89PNG"}), headers=headers).json()
    s.update(edit={"source": {"upload": up["id"]}, "inside": ["a blue {class}"]})
    assert client.post("/v1/jobs", json=s, headers=headers).status_code == 201
    s = copy.deepcopy(SPEC)
    cls = s["classes"][0]["name"]
    s.update(method="layout", layout={"objects": [{"class": cls, "box": [0.1, 0.1, 0.6, 0.6]}]})
    assert client.post("/v1/jobs", json=s, headers=headers).status_code == 201, client.post("/v1/jobs", json=s, headers=headers).text
    s["layout"] = {"objects": [{"class": "nope", "box": [0.1, 0.1, 0.6, 0.6]}]}
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 422 and "nope" in r.json()["detail"], r.json()
    s["layout"] = {"objects": [{"class": cls, "box": [0.1, 0.1, 0.6, 0.6]}], "box_mask": True,
                   "shapes": {"path": "/srv/shapes"}}
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "layout.shapes.path", r.json()
    s["layout"]["shapes"] = {"upload": "0" * 32}
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "layout.shapes.upload" and "no upload" in r.json()["detail"]
    s["layout"]["shapes"] = {"upload": up["id"]}
    assert client.post("/v1/jobs", json=s, headers=headers).status_code == 201
    s["layout"]["box_mask"] = False
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 422 and "box_mask: true" in r.json()["detail"]


# ------------------------------------------------------------------ sources naming a dataset version
def made_version(client, headers, run_job, name: str) -> dict:
    """A job of dataset `name`, run to the end (fake engine): the dataset's next version."""
    r = client.post(f"/v1/jobs?dataset={name}", json=SPEC, headers=headers)
    assert r.status_code == 201, r.text
    run_job(r.json()["id"])
    return r.json()


def test_a_source_names_a_dataset_version_and_latest_is_pinned(client, headers, other_headers, run_job, settings):
    settings.max_active_jobs_per_tenant = 20
    name = f"cats-{uuid.uuid4().hex[:6]}"
    first = made_version(client, headers, run_job, name)
    r = client.post("/v1/jobs", json=m2i_spec({"dataset": name}), headers=headers)  # version: latest by default
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["mask2image"]["source"] == {**r.json()["spec"]["mask2image"]["source"],
                                                        "dataset": name, "version": 1}
    second = made_version(client, headers, run_job, name)
    assert second["id"] != first["id"]
    later = client.post("/v1/jobs", json=m2i_spec({"dataset": name, "version": "latest"}), headers=headers).json()
    assert later["spec"]["mask2image"]["source"]["version"] == 2
    # the first job keeps the version it was submitted with (shards re-run later read the same data)
    assert client.get(f"/v1/jobs/{r.json()['id']}", headers=headers).json()["spec"]["mask2image"]["source"]["version"] == 1
    pinned = client.post("/v1/jobs", json=m2i_spec({"dataset": name, "version": "v1"}), headers=headers).json()
    assert pinned["spec"]["mask2image"]["source"]["version"] == 1
    # edit and augment read the same SourceSpec
    s = copy.deepcopy(SPEC)
    s.update(method="edit", edit={"source": {"dataset": name, "version": 2}, "inside": ["a blue {class}"]})
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 201 and r.json()["spec"]["edit"]["source"]["version"] == 2, r.text
    # image2image names its dataset on itself
    s = copy.deepcopy(SPEC)
    s.update(method="image2image", image2image={"dataset": name})
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 201 and r.json()["spec"]["image2image"]["version"] == 2, r.text
    r = client.post("/v1/jobs", json=s, headers=other_headers)
    assert r.status_code == 422 and r.json()["field"] == "image2image.dataset" and "no dataset" in r.json()["detail"]


def test_dataset_sources_refused_with_the_field_and_the_fix(client, headers, other_headers, run_job, settings):
    settings.max_active_jobs_per_tenant = 20
    name = f"dogs-{uuid.uuid4().hex[:6]}"
    made_version(client, headers, run_job, name)
    r = client.post("/v1/jobs", json=m2i_spec({"dataset": "nope-" + name}), headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.source.dataset"
    assert "no dataset" in r.json()["detail"] and "GET /v1/datasets" in r.json()["detail"]
    r = client.post("/v1/jobs", json=m2i_spec({"dataset": name, "version": 9}), headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.source.version"
    assert "no version v9 (its latest is v1)" in r.json()["detail"] and f"/v1/datasets/{name}/versions" in r.json()["detail"]
    r = client.post("/v1/jobs", json=m2i_spec({"dataset": name, "version": "newest"}), headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.source.version" and "latest" in r.json()["detail"]
    r = client.post("/v1/jobs", json=m2i_spec({"dataset": "../etc"}), headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.source.dataset"
    r = client.post("/v1/jobs", json=m2i_spec({"dataset": name, "upload": "0" * 32}), headers=headers)
    assert r.status_code == 422 and "exactly one of path" in r.json()["detail"]
    r = client.post("/v1/jobs", json=m2i_spec({"dataset": name, "format": "coco"}), headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.source.format"
    # a dataset without a succeeded job has no version yet
    empty = f"empty-{uuid.uuid4().hex[:6]}"
    assert client.post(f"/v1/jobs?dataset={empty}", json=SPEC, headers=headers).status_code == 201
    r = client.post("/v1/jobs", json=m2i_spec({"dataset": empty}), headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.source.version" and "no version yet" in r.json()["detail"]


def test_a_tenant_never_reads_another_tenants_dataset(client, headers, other_headers, run_job, settings, store,
                                                      session_factory, dispatcher, tmp_path):
    settings.max_active_jobs_per_tenant = 20
    settings.source_cache_dir = tmp_path / "sources"
    name = f"private-{uuid.uuid4().hex[:6]}"
    mine = made_version(client, headers, run_job, name)
    # another tenant naming it gets exactly what a missing dataset gets
    theirs = client.post("/v1/jobs", json=m2i_spec({"dataset": name}), headers=other_headers)
    missing = client.post("/v1/jobs", json=m2i_spec({"dataset": name + "-x"}), headers=other_headers)
    assert theirs.status_code == missing.status_code == 422
    assert theirs.json()["field"] == "mask2image.source.dataset"
    assert theirs.json()["detail"].replace(name, "N") == missing.json()["detail"].replace(name + "-x", "N")
    # with a dataset of the same name of its own, it reads its own version, never the other one
    own = made_version(client, other_headers, run_job, name)
    r = client.post("/v1/jobs", json=m2i_spec({"dataset": name}), headers=other_headers)
    assert r.status_code == 201, r.text
    # ... and the worker resolves (name, version) within the job's own tenant only
    from shared.db.session import UnitOfWork
    from shared.jobs import repository as jobs_repo
    from worker.service.context import WorkerContext

    with UnitOfWork(session_factory) as uow:
        tenant_a = jobs_repo.get_job(uow.session, uuid.UUID(mine["id"])).tenant_id
        tenant_b = jobs_repo.get_job(uow.session, uuid.UUID(own["id"])).tenant_id
    ctx = WorkerContext(settings=settings, session_factory=session_factory, store=store, dispatcher=dispatcher)
    folder_a = ctx.datasets(tenant_a)(name, 1)
    folder_b = ctx.datasets(tenant_b)(name, None)
    assert folder_a.name == mine["id"] and folder_b.name == own["id"]
    from shared.formats.spec import SpecError

    with pytest.raises(SpecError, match="no version v2"):
        ctx.datasets(tenant_b)(name, 2)


def test_a_worker_materialises_the_version_as_a_dsgen_folder(client, headers, run_job, settings, store,
                                                             session_factory, dispatcher, tmp_path):
    """The shard's engine gets a fetcher for the job's tenant; the folder is what `dsgen run` writes
    and the mask2image loader reads; a second fetch reuses it."""
    from tests.support.fakes import FakeEngine
    from worker.engine.mask_sources import detect_format, load_mask_sources
    from worker.service.context import WorkerContext
    from worker.service.shards import run_shard

    settings.max_active_jobs_per_tenant = 20
    settings.source_cache_dir = tmp_path / "sources"
    name = f"masks-{uuid.uuid4().hex[:6]}"
    source_job = made_version(client, headers, run_job, name)
    job = client.post("/v1/jobs", json=m2i_spec({"dataset": name}), headers=headers).json()
    seen = []

    class Engine(FakeEngine):
        def __init__(self, spec, uploads=None, datasets=None):
            super().__init__(spec, uploads, datasets)
            src = spec.mask2image.source
            seen.append(datasets(src.dataset, src.version))

    ctx = WorkerContext(settings=settings, session_factory=session_factory, store=store, dispatcher=dispatcher,
                        engine_factory=Engine)
    assert run_shard(ctx, uuid.UUID(job["id"]), 0) == "succeeded"
    folder = seen[0]
    assert folder == settings.source_cache_dir / "jobs" / source_job["id"]
    assert detect_format(folder) == "dsgen"
    assert sorted(p.name for p in (folder / "samples").iterdir()) == [f"{i:06d}" for i in range(SPEC["num_images"])]
    assert sorted(p.name for p in (folder / "samples" / "000003").iterdir()) == \
        ["image.png", "instances.png", "record.json", "semantic.png"]
    assert [c["name"] for c in json.loads((folder / "spec.json").read_text())["classes"]] == ["cat", "dog"]
    from shared.formats.spec import SourceSpec

    masks = load_mask_sources(SourceSpec(dataset=name, version=1), ("cat", "dog"), folder)
    assert len(masks) == SPEC["num_images"] and (masks[0].load().semantic == 1).sum() == 36
    (folder / "samples" / "000000" / "marker").write_text("cached")
    assert run_shard(ctx, uuid.UUID(job["id"]), 1) == "succeeded"
    assert seen[1] == folder and (folder / "samples" / "000000" / "marker").exists()  # fetched once
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


# ------------------------------------------------------------------ a ControlNet over the API
def controlnet_zip(weights: str = "diffusion_pytorch_model.safetensors") -> bytes:
    return zip_of({"cn/config.json": b'{"_class_name": "ControlNetModel"}', f"cn/{weights}": b"\0" * 64})


def test_a_controlnet_is_an_upload_never_a_server_path(client, headers, other_headers):
    s = m2i_spec({"upload": client.post("/v1/sources", content=zip_of({"a.png": b"x"}), headers=headers).json()["id"]})
    s["mask2image"].update(backend="controlnet", controlnet="/srv/controlnets/seg")
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.controlnet"
    assert "POST it to /v1/sources" in r.json()["detail"] and "upload:<id>" in r.json()["detail"]
    up = client.post("/v1/sources", content=controlnet_zip(), headers=headers)
    assert up.status_code == 201 and up.json()["format"] == "controlnet", up.text
    s["mask2image"]["controlnet"] = f"upload:{up.json()['id']}"
    other = copy.deepcopy(s)
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 201, r.text
    # another tenant's ControlNet is a missing one
    other["mask2image"]["source"] = {"upload": client.post("/v1/sources", content=zip_of({"a.png": b"x"}),
                                                           headers=other_headers).json()["id"]}
    r = client.post("/v1/jobs", json=other, headers=other_headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.controlnet" and "no upload" in r.json()["detail"]
    # an upload that is not a ControlNet
    s["mask2image"]["controlnet"] = f"upload:{s['mask2image']['source']['upload']}"
    r = client.post("/v1/jobs", json=s, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "mask2image.controlnet" and "not a ControlNet" in r.json()["detail"]


def test_a_controlnet_with_only_pickled_weights_is_refused_at_upload(client, headers, store):
    r = client.post("/v1/sources", content=controlnet_zip("diffusion_pytorch_model.bin"), headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "archive"
    assert "safetensors" in r.json()["detail"] and ".bin" in r.json()["detail"]
    assert store.list("sources/") == []
