"""Schedules, datasets (versions, `latest`, diffs) and /metrics over HTTP."""
from __future__ import annotations

import copy
import datetime as dt
import uuid

from api_spec import SPEC
from prometheus_client.parser import text_string_to_metric_families

from shared.datasets import versions as datasets
from shared.db.session import UnitOfWork
from shared.formats.records import Annotation, ModelInfo, SampleRecord
from shared.schedules import usecases as schedules


def spec(**over):
    s = copy.deepcopy(SPEC)
    s.update(over)
    return s


def schedule_body(**over):
    return {"name": f"nightly-{uuid.uuid4().hex[:6]}", "cron": "0 2 * * *", "timezone": "Europe/Berlin",
            "spec": spec(), **over}


def test_schedule_crud(client, headers, other_headers):
    r = client.post("/v1/schedules", json=schedule_body(name="nightly"), headers=headers)
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["dataset"] == "nightly" and s["enabled"] and s["missed"] == "skip"
    assert dt.datetime.fromisoformat(s["next_fire_at"]).astimezone(dt.timezone.utc).minute == 0
    assert client.post("/v1/schedules", json=schedule_body(name="nightly"), headers=headers).status_code == 409
    assert [x["id"] for x in client.get("/v1/schedules", headers=headers).json()["items"]] == [s["id"]]
    assert client.get(f"/v1/schedules/{s['id']}", headers=other_headers).status_code == 404
    assert client.get("/v1/schedules", headers=other_headers).json()["items"] == []
    r = client.patch(f"/v1/schedules/{s['id']}", json={"enabled": False, "missed": "catch_up"}, headers=headers)
    assert r.status_code == 200 and r.json()["next_fire_at"] is None and r.json()["missed"] == "catch_up"
    r = client.patch(f"/v1/schedules/{s['id']}", json={"enabled": True, "cron": "*/15 * * * *"}, headers=headers)
    assert r.json()["cron"] == "*/15 * * * *" and r.json()["next_fire_at"] is not None
    assert client.get(f"/v1/schedules/{s['id']}/runs", headers=headers).json() == {"items": []}
    assert client.delete(f"/v1/schedules/{s['id']}", headers=other_headers).status_code == 404
    assert client.delete(f"/v1/schedules/{s['id']}", headers=headers).status_code == 204
    assert client.get(f"/v1/schedules/{s['id']}", headers=headers).status_code == 404


def test_bad_schedules_are_422_naming_the_field(client, headers):
    cases = [
        (schedule_body(cron="0 25 * * *"), "cron"),
        (schedule_body(cron="every night"), "cron"),
        (schedule_body(cron="0 0 31 2 *"), "cron"),
        (schedule_body(timezone="Europe/Atlantis"), "timezone"),
        (schedule_body(missed="burst"), "missed"),
        (schedule_body(name="no spaces allowed"), "name"),
        (schedule_body(spec=spec(generation={"width": 16, "height": 16, "steps": 0})), "spec.generation.steps"),
        (schedule_body(spec=spec(num_images=50_000)), "spec.num_images"),
        (schedule_body(cron=None), "cron"),
        (schedule_body(colour="red"), "colour"),
    ]
    for body, field in cases:
        r = client.post("/v1/schedules", json=body, headers=headers)
        assert r.status_code == 422, (field, r.text)
        assert r.json()["field"] == field, (field, r.json())
    s = client.post("/v1/schedules", json=schedule_body(), headers=headers).json()
    r = client.patch(f"/v1/schedules/{s['id']}", json={"cron": "* * *"}, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "cron"
    r = client.patch(f"/v1/schedules/{s['id']}", json={"enabled": None}, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "enabled"
    assert client.get("/v1/schedules/not-a-uuid", headers=headers).json()["field"] == "schedule_id"


def test_schedule_runs_are_listed_with_their_jobs(client, headers, settings, session_factory, dispatcher):
    s = client.post("/v1/schedules", json=schedule_body(cron="* * * * *", timezone="UTC"), headers=headers).json()
    first = dt.datetime.fromisoformat(s["next_fire_at"])
    sid = uuid.UUID(s["id"])
    for k in range(2):
        fired = schedules.tick(lambda: UnitOfWork(session_factory), dispatcher, settings,
                               now=first + dt.timedelta(minutes=k, seconds=2))
        assert [f.outcome for f in fired if f.schedule_id == sid] == ["submitted"]
    runs = client.get(f"/v1/schedules/{s['id']}/runs", headers=headers).json()["items"]
    assert len(runs) == 2 and all(r["job_status"] == "queued" for r in runs)
    job = client.get(f"/v1/jobs/{runs[0]['job_id']}", headers=headers).json()
    assert job["dataset"] == s["dataset"] and job["version"] is None


def test_dataset_versions_latest_and_diff(client, headers, other_headers, run_job):
    name = f"cats-{uuid.uuid4().hex[:6]}"
    first = client.post(f"/v1/jobs?dataset={name}", json=spec(num_images=6), headers=headers).json()
    second = client.post(f"/v1/jobs?dataset={name}", json=spec(num_images=4), headers=headers).json()
    assert first["dataset"] == name
    assert client.get(f"/v1/datasets/{name}/versions/latest", headers=headers).status_code == 404  # none succeeded yet
    run_job(second["id"])  # finishes first: it is v1
    run_job(first["id"])
    listed = {d["name"]: d for d in client.get("/v1/datasets", headers=headers).json()["items"]}
    assert listed[name]["versions"] == 2 and listed[name]["latest"] == 2
    versions = client.get(f"/v1/datasets/{name}/versions", headers=headers).json()
    assert [(v["name"], v["job_id"]) for v in versions["items"]] == [("v2", first["id"]), ("v1", second["id"])]
    latest = client.get(f"/v1/datasets/{name}/versions/latest", headers=headers).json()
    assert latest["version"] == 2 and latest["job_id"] == first["id"] and latest["manifest_url"]
    assert sorted(e["format"] for e in latest["exports"]) == sorted(SPEC["export"]["formats"])
    assert client.get(f"/v1/datasets/{name}/versions/v1", headers=headers).json()["job_id"] == second["id"]
    assert client.get(f"/v1/jobs/{first['id']}", headers=headers).json()["version"] == 2
    # the fake engine gives every sample one "cat" instance
    d = client.get(f"/v1/datasets/{name}/diff", params={"base": "v1", "head": "latest"}, headers=headers).json()
    assert (d["base"], d["head"]) == (1, 2)
    assert d["samples"] == {"base": 4, "head": 6, "delta": 2}
    assert d["instances"]["cat"] == {"base": 4, "head": 6, "delta": 2}
    assert d["instances"]["dog"] == {"base": 0, "head": 0, "delta": 0}
    assert d["images"]["cat"]["delta"] == 2
    # errors
    assert client.get(f"/v1/datasets/{name}/versions", headers=other_headers).status_code == 404
    r = client.get(f"/v1/datasets/{name}/versions/newest", headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "version"
    assert client.get(f"/v1/datasets/{name}/versions/v9", headers=headers).status_code == 404
    r = client.get(f"/v1/datasets/{name}/diff", params={"base": "x"}, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "base"
    r = client.post("/v1/jobs?dataset=../etc", json=spec(), headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "dataset"


def test_version_numbers_are_assigned_once(session_factory, client, headers, run_job):
    name = f"once-{uuid.uuid4().hex[:6]}"
    job = client.post(f"/v1/jobs?dataset={name}", json=spec(), headers=headers).json()
    run_job(job["id"])
    with UnitOfWork(session_factory) as uow:  # a duplicated finalisation records nothing new
        assert datasets.record_version(uow, uuid.UUID(job["id"]), {}) == 1
    assert [v["version"] for v in client.get(f"/v1/datasets/{name}/versions", headers=headers).json()["items"]] == [1]


def test_summary_means_quality_and_counts_classes():
    def rec(i, cats, dogs, quality):
        anns = [Annotation(instance_id=k + 1, category="cat" if k < cats else "dog", category_id=1 if k < cats else 2,
                           bbox=(0, 0, 1, 1), area=1) for k in range(cats + dogs)]
        return SampleRecord(index=i, seed=i, prompt="p", classes=["cat", "dog"], model=ModelInfo(id="m"),
                            method="text2image", width=8, height=8, annotations=anns, quality=quality)

    s = datasets.summarize([rec(0, 2, 0, {"uncertain_fraction": 0.1, "peak_attention": {"cat": 0.5}}),
                            rec(1, 1, 1, {"uncertain_fraction": 0.3, "peak_attention": {"cat": 0.7, "dog": 0.2}})],
                           ["cat", "dog", "bird"])
    assert s["samples"] == 2
    assert s["instances"] == {"bird": 0, "cat": 3, "dog": 1}
    assert s["images"] == {"bird": 0, "cat": 2, "dog": 1}
    assert s["quality"] == {"peak_attention.cat": 0.6, "peak_attention.dog": 0.2, "uncertain_fraction": 0.2}


def test_spec_text_is_parsed_or_refused_naming_the_line(client, headers):
    r = client.post("/v1/specs/parse", json={"text": "name: x\nnum_images: 3\n"}, headers=headers)
    assert r.status_code == 200 and r.json() == {"spec": {"name": "x", "num_images": 3}}
    r = client.post("/v1/specs/parse", json={"text": "name: x\n  bad: [1,\n"}, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "text" and "line" in r.json()["detail"]
    r = client.post("/v1/specs/parse", json={"text": "- just\n- a list\n"}, headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "text"


def test_metrics_parse_and_count_the_service(client, headers, run_job):
    job = client.post("/v1/jobs", json=spec(), headers=headers).json()
    run_job(job["id"])
    client.post("/v1/jobs", json=spec(), headers=headers)  # one left queued: its shards wait in the gpu queue
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    jobs = {s.labels["status"]: s.value for s in families["dsgen_jobs"].samples}
    assert set(jobs) >= {"queued", "running", "succeeded", "failed", "cancelled"}
    assert jobs["succeeded"] >= 1 and jobs["queued"] >= 1
    assert families["dsgen_samples_generated"].samples[0].value >= 6
    assert families["dsgen_images_per_second"].samples[0].value > 0  # 6 samples written just now
    hist = {(s.name, s.labels.get("le")): s.value for s in families["dsgen_shard_duration_seconds"].samples}
    assert hist[("dsgen_shard_duration_seconds_count", None)] >= 2
    assert hist[("dsgen_shard_duration_seconds_bucket", "+Inf")] == hist[("dsgen_shard_duration_seconds_count", None)]
    assert "dsgen_shard_retries" in families
    depth = {s.labels["queue"]: s.value for s in families["dsgen_queue_depth"].samples}
    assert depth["gpu"] >= 2 and "cpu" in depth
    assert families["dsgen_database_up"].samples[0].value == 1
    for fam in families.values():  # no job ids as label values
        for sample in fam.samples:
            assert job["id"] not in sample.labels.values()
    assert job["id"] not in text
