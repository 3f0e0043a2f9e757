"""/v1/sources: upload validation over HTTP, tenant isolation, and specs that name sources."""
from __future__ import annotations

import copy
import io
import zipfile

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
