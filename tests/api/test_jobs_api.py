import copy
import uuid

import httpx
from api_spec import SPEC

from shared.dispatch.tasks import SHARD_TASK


def spec(**over):
    s = copy.deepcopy(SPEC)
    s.update(over)
    return s


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_keys_are_required(client, headers):
    r = client.get("/v1/jobs")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer dsg_nope_x"}).status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/v1/jobs", headers=headers).status_code == 200


def test_submit_returns_the_job_at_once_and_sends_its_shards(client, headers, dispatcher):
    r = client.post("/v1/jobs", json=spec(), headers=headers)
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"]["total"] == 6 and job["progress"]["done"] == 0
    assert [s["status"] for s in job["shard_list"]] == ["queued", "queued"]
    assert dispatcher.sent == [(SHARD_TASK, (job["id"], 0)), (SHARD_TASK, (job["id"], 1))]
    got = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert got["id"] == job["id"] and got["spec"]["num_images"] == 6


def test_idempotency_key_returns_the_first_job(client, headers, dispatcher):
    h = {**headers, "Idempotency-Key": "abc-1"}
    first = client.post("/v1/jobs", json=spec(), headers=h)
    again = client.post("/v1/jobs", json=spec(), headers=h)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert len(dispatcher.sent) == 2  # sent once
    other = client.post("/v1/jobs", json=spec(num_images=4), headers=h)
    assert other.status_code == 409 and other.json()["field"] == "Idempotency-Key"


def test_bad_specs_name_the_field(client, headers):
    cases = [
        (spec(generation={"width": 16, "height": 16, "steps": 0}), "generation.steps"),
        (spec(genration={}), "genration"),
        (spec(num_images=5000), "num_images"),
        (spec(generation={"width": 1024, "height": 16}), "generation.width"),
        (spec(generation={"steps": 80, "width": 16, "height": 16}), "generation.steps"),
        (spec(classes=[{"name": f"c{i}"} for i in range(6)]), "classes"),
        (spec(model="org/not-served"), "model.id"),
        (spec(prompts={"source": "captions_file", "captions_file": "/etc/passwd"}), "prompts.captions_file"),
        (spec(prompts={"templates": ["a photo of a {class} " + "x" * 200]}), "prompts.templates"),
        ({"model": "builtin:tiny-random"}, "classes"),
    ]
    for body, field in cases:
        r = client.post("/v1/jobs", json=body, headers=headers)
        assert r.status_code == 422, (field, r.text)
        assert r.json()["field"] == field, (field, r.json())
        assert field in r.json()["detail"]
    r = client.post("/v1/jobs", content=b"{not json", headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 422


def test_too_many_active_jobs_is_429(client, headers):
    for _ in range(3):
        assert client.post("/v1/jobs", json=spec(), headers=headers).status_code == 201
    r = client.post("/v1/jobs", json=spec(), headers=headers)
    assert r.status_code == 429 and "limit 3" in r.json()["detail"] and r.headers["retry-after"]


def test_oversize_bodies_are_refused(client, headers):
    big = spec(prompts={"source": "list", "prompts": ["a cat"] * 200_000})
    r = client.post("/v1/jobs", json=big, headers=headers)
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_list_filters_and_pages_with_a_cursor(client, headers, run_job):
    ids = [client.post("/v1/jobs", json=spec(), headers=headers).json()["id"] for _ in range(3)]
    run_job(ids[0])
    page = client.get("/v1/jobs", params={"limit": 2}, headers=headers).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2] and page["next_cursor"]
    rest = client.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}, headers=headers).json()
    assert [j["id"] for j in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    done = client.get("/v1/jobs", params={"status": "succeeded"}, headers=headers).json()
    assert [j["id"] for j in done["items"]] == [ids[0]]
    assert client.get("/v1/jobs", params={"status": "nope"}, headers=headers).json()["field"] == "status"
    assert client.get("/v1/jobs", params={"cursor": "garbage"}, headers=headers).json()["field"] == "cursor"
    assert client.get("/v1/jobs", params={"limit": 0}, headers=headers).json()["field"] == "limit"


def test_progress_samples_exports_and_downloads(client, headers, run_job):
    job = client.post("/v1/jobs", json=spec(), headers=headers).json()
    run_job(job["id"], shards=[0], finalize=False)
    mid = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert mid["status"] == "running" and mid["progress"]["done"] == 4
    assert mid["progress"]["shards"] == {"succeeded": 1, "queued": 1}
    assert mid["progress"]["eta_s"] is not None and mid["progress"]["images_per_s"] > 0
    run_job(job["id"])
    done = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert done["status"] == "succeeded" and done["progress"]["done"] == 6 and done["progress"]["eta_s"] is None
    page = client.get(f"/v1/jobs/{job['id']}/samples", params={"limit": 4}, headers=headers).json()
    assert [s["index"] for s in page["items"]] == [0, 1, 2, 3] and page["next_cursor"] == "3"
    rest = client.get(f"/v1/jobs/{job['id']}/samples", params={"cursor": "3"}, headers=headers).json()
    assert [s["index"] for s in rest["items"]] == [4, 5] and rest["next_cursor"] is None
    s0 = page["items"][0]
    assert s0["annotations"][0]["category"] == "cat" and set(s0["urls"]) >= {"image", "semantic", "overlay"}
    img = client.get(s0["urls"]["image"].replace("http://testserver", ""))
    assert img.status_code == 200 and img.content[:4] == b"\x89PNG"
    tampered = s0["urls"]["image"].replace("image.png", "semantic.png").replace("http://testserver", "")
    assert client.get(tampered).status_code == 403
    exports = client.get(f"/v1/jobs/{job['id']}/exports", headers=headers).json()
    assert [e["format"] for e in exports["items"]] == ["coco"] and exports["manifest_url"]
    one = client.get(f"/v1/jobs/{job['id']}/exports/coco", headers=headers).json()
    assert client.get(httpx.URL(one["url"]).raw_path.decode()).content[:2] == b"PK"
    redirect = client.get(f"/v1/jobs/{job['id']}/exports/coco", params={"download": "true"}, headers=headers,
                          follow_redirects=False)
    assert redirect.status_code == 307
    assert client.get(f"/v1/jobs/{job['id']}/exports/yolo", headers=headers).json()["field"] == "format"


def test_another_tenants_job_is_404_everywhere(client, headers, other_headers, run_job):
    job = client.post("/v1/jobs", json=spec(), headers=headers).json()
    run_job(job["id"])
    jid = job["id"]
    for method, path in [("GET", f"/v1/jobs/{jid}"), ("GET", f"/v1/jobs/{jid}/samples"),
                         ("GET", f"/v1/jobs/{jid}/exports"), ("GET", f"/v1/jobs/{jid}/exports/coco"),
                         ("POST", f"/v1/jobs/{jid}/cancel"), ("POST", f"/v1/jobs/{jid}/retry"),
                         ("DELETE", f"/v1/jobs/{jid}")]:
        r = client.request(method, path, headers=other_headers)
        assert r.status_code == 404, (method, path, r.text)
    assert client.get("/v1/jobs", headers=other_headers).json()["items"] == []
    assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=headers).status_code == 404
    assert client.get(f"/v1/jobs/{jid}", headers=headers).status_code == 200


def test_cancel_retry_and_delete(client, headers, run_job, store):
    job = client.post("/v1/jobs", json=spec(), headers=headers).json()
    assert client.delete(f"/v1/jobs/{job['id']}", headers=headers).status_code == 409  # still active
    assert client.post(f"/v1/jobs/{job['id']}/retry", headers=headers).status_code == 409  # not failed
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"  # nothing was running
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 409
    done = client.post("/v1/jobs", json=spec(), headers=headers).json()
    run_job(done["id"])
    assert store.list(f"jobs/{done['id']}/")
    assert client.delete(f"/v1/jobs/{done['id']}", headers=headers).status_code == 204
    assert store.list(f"jobs/{done['id']}/") == []
    assert client.get(f"/v1/jobs/{done['id']}", headers=headers).status_code == 404


def test_models_metrics_and_openapi(client, headers):
    from shared.formats.model_meta import builtin_model_ids

    served = [m["id"] for m in client.get("/v1/models", headers=headers).json()["items"]]
    assert served == builtin_model_ids() and {"builtin:tiny-random", "builtin:shapes-v1"} <= set(served)
    jid = client.post("/v1/jobs", json=spec(), headers=headers).json()["id"]
    client.get(f"/v1/jobs/{jid}", headers=headers)
    metrics = client.get("/metrics").text
    assert 'dsgen_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"}' in metrics
    assert "dsgen_jobs_submitted_total 1.0" in metrics
    assert jid not in metrics
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/samples", "/v1/jobs/{job_id}/exports/{fmt}",
            "/v1/models", "/healthz", "/readyz"} <= set(paths)
