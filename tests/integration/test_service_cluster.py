"""End-to-end with real worker processes (see conftest.py for the cluster)."""
from __future__ import annotations

import copy
import hashlib
import io
import json
import time
import uuid
import zipfile

import httpx
import pytest
from cluster_support import SPEC, make_key, wait_for
from sqlalchemy import func, select

from shared.db.models import Sample, Shard
from shared.dispatch.dispatcher import CeleryDispatcher
from shared.jobs import repository as jobs_repo
from shared.storage import keys
from shared.storage.objects import make_store
from tests.support.fakes import RecordingDispatcher
from tests.support.services import REDIS_URL, flush_redis

pytestmark = pytest.mark.slow

SAMPLE_FILES = ("image.png", "semantic.png", "instances.png", "overlay.png", "record.json")


def submit(api, headers, **over) -> dict:
    spec = copy.deepcopy(SPEC)
    spec.update(over)
    r = api.post("/v1/jobs", json=spec, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def object_digests(cluster, job_id: str) -> dict[str, str]:
    """sample file (relative to the job's shard folders) -> sha256 of its bytes."""
    store = make_store(cluster.settings)
    out = {}
    for key in store.list(f"{keys.job_prefix(job_id)}shards/"):
        out[key.split("/", 4)[4]] = hashlib.sha256(store.get(key)).hexdigest()
    return out


def shards_of(cluster, job_id: str) -> list[Shard]:
    with cluster.uow() as uow:
        return jobs_repo.list_shards(uow.session, uuid.UUID(job_id))


@pytest.fixture(scope="module")
def undisturbed(cluster, api, headers):
    job = submit(api, headers)
    done = wait_for(api, headers, job["id"], cluster=cluster)
    assert done["status"] == "succeeded", (done.get("error"), done)
    return done


def test_a_job_runs_on_two_workers_and_its_exports_load_in_pycocotools(cluster, api, headers, undisturbed, tmp_path):
    job = undisturbed
    assert job["progress"]["done"] == 8 and job["progress"]["shards"] == {"succeeded": 2}
    workers = {s.worker for s in shards_of(cluster, job["id"])}
    assert len(workers) == 2, workers  # each shard on its own worker process
    # every object once: 8 samples x 5 files, 2 shard export fragments, 2 archives, the manifest
    store = make_store(cluster.settings)
    objects = store.list(keys.job_prefix(job["id"]))
    assert len(objects) == 8 * len(SAMPLE_FILES) + 2 + 2 + 1
    assert {keys.fragment_key(job["id"], i) for i in range(2)} <= set(objects)
    exports = api.get(f"/v1/jobs/{job['id']}/exports", headers=headers).json()
    assert sorted(e["format"] for e in exports["items"]) == ["coco", "yolo"]
    coco = next(e for e in exports["items"] if e["format"] == "coco")
    archive = httpx.get(coco["url"])  # presigned URL, straight from S3
    assert archive.status_code == 200 and hashlib.sha256(archive.content).hexdigest() == coco["sha256"]
    zipfile.ZipFile(io.BytesIO(archive.content)).extractall(tmp_path / "coco")
    from pycocotools.coco import COCO

    ann_files = sorted((tmp_path / "coco").rglob("instances_*.json"))
    assert ann_files
    n_images = 0
    for path in ann_files:
        ds = COCO(str(path))
        n_images += len(ds.getImgIds())
        if ds.getAnnIds():
            preds = [{**a, "score": 0.9} for a in ds.loadAnns(ds.getAnnIds())]
            assert len(ds.loadRes(preds).getAnnIds()) == len(preds)
    assert n_images == 8
    manifest = httpx.get(exports["manifest_url"])
    assert manifest.status_code == 200 and json.loads(manifest.content)
    samples = api.get(f"/v1/jobs/{job['id']}/samples", headers=headers).json()["items"]
    assert len(samples) == 8 and httpx.get(samples[0]["urls"]["overlay"]).content[:4] == b"\x89PNG"


def test_kill_9_mid_shard_still_gives_exactly_the_same_dataset(cluster, api, headers, undisturbed):
    job = submit(api, headers)
    jid = uuid.UUID(job["id"])
    victim = None
    deadline = time.time() + 90
    while victim is None:  # a shard with its first batch written and its second not yet
        assert time.time() < deadline, "never saw a shard half done"
        with cluster.uow() as uow:
            per_shard = jobs_repo.samples_per_shard(uow.session, jid)
            for s in jobs_repo.list_shards(uow.session, jid):
                if s.status == "running" and 0 < per_shard.get(s.index, 0) < s.stop - s.start:
                    victim = s
                    break
        time.sleep(0.02)
    pid = int(victim.worker.rsplit(":", 1)[1])
    name = next(n for n in ("gpu1", "gpu2") if n in cluster.procs and pid in cluster.worker_pids(n))
    cluster.kill9(name)
    try:
        done = wait_for(api, headers, job["id"], cluster=cluster)
    finally:
        cluster.start_worker(name + "b", "gpu")  # back to two GPU workers
    assert done["status"] == "succeeded", (done.get("error"), done)
    shard = next(s for s in shards_of(cluster, job["id"]) if s.index == victim.index)
    assert shard.attempts == 2 and shard.worker != victim.worker
    with cluster.uow() as uow:
        rows = uow.session.scalar(select(func.count()).select_from(Sample).where(Sample.job_id == jid))
    assert rows == 8  # exactly N rows (the primary key makes duplicates impossible; count anyway)
    store = make_store(cluster.settings)
    assert len(store.list(keys.job_prefix(jid))) == 8 * len(SAMPLE_FILES) + 2 + 2 + 1  # + 2 fragments
    assert object_digests(cluster, job["id"]) == object_digests(cluster, undisturbed["id"])  # same bytes


def test_redis_flushed_mid_job_is_recovered_by_the_reconciler(cluster, api, headers):
    job = submit(api, headers, num_images=16)  # 4 shards: 2 run, 2 wait in the queue
    deadline = time.time() + 60
    while not any(s.status == "running" for s in shards_of(cluster, job["id"])):
        assert time.time() < deadline
        time.sleep(0.05)
    flush_redis(REDIS_URL)  # the queue and the unacked messages are gone
    done = wait_for(api, headers, job["id"], cluster=cluster)
    assert done["status"] == "succeeded" and done["progress"]["done"] == 16, done
    assert "stopped heartbeating" not in json.dumps(done["shard_list"])  # only lost messages were re-sent


def test_cancel_stops_within_one_batch_and_keeps_what_was_done(cluster, api, headers):
    job = submit(api, headers, num_images=40)
    deadline = time.time() + 60
    while api.get(f"/v1/jobs/{job['id']}", headers=headers).json()["progress"]["done"] < 4:
        assert time.time() < deadline
        time.sleep(0.05)
    r = api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert r.status_code == 200 and r.json()["status"] in ("cancelling", "cancelled")
    at_cancel = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()["progress"]["done"]
    done = wait_for(api, headers, job["id"], timeout=60, cluster=cluster)
    assert done["status"] == "cancelled"
    # per worker: no batch is started after the flag is seen; the batch being generated and
    # the one being written when it was set are kept
    batch, gpu_workers = 2, 2
    assert at_cancel <= done["progress"]["done"] <= at_cancel + 2 * batch * gpu_workers
    assert done["progress"]["done"] < 40
    store = make_store(cluster.settings)
    kept = [k for k in store.list(f"{keys.job_prefix(job['id'])}shards/") if not k.endswith(keys.FRAGMENT_FILE)]
    assert len(kept) == done["progress"]["done"] * len(SAMPLE_FILES)  # what was done is kept
    assert set(done["progress"]["shards"]) <= {"succeeded", "cancelled"}


def test_retry_reruns_only_the_failed_shards(cluster, api, headers):
    from fastapi.testclient import TestClient

    from api.app import create_app

    hold = RecordingDispatcher()  # accept the job, send nothing yet
    with TestClient(create_app(cluster.settings, dispatcher=hold)) as held_api:
        job = submit(held_api, headers, num_images=12)  # 3 shards
    jid = uuid.UUID(job["id"])
    with cluster.uow() as uow:  # shard 1 has crashed its workers up to the attempt cap
        uow.session.execute(Shard.__table__.update().where(Shard.job_id == jid, Shard.index == 1)
                            .values(attempts=cluster.settings.max_attempts))
    real = CeleryDispatcher(api.app.state.resources.dispatcher.app)
    for _name, (job_id, index) in hold.sent:
        real.send_shard(uuid.UUID(job_id), index)
    failed = wait_for(api, headers, job["id"], cluster=cluster)
    assert failed["status"] == "failed" and "1 of 3 shard(s) failed" in failed["error"]
    before = {s.index: (s.status, s.attempts, s.finished_at) for s in shards_of(cluster, job["id"])}
    assert before[1][0] == "failed" and before[0][0] == before[2][0] == "succeeded"
    r = api.post(f"/v1/jobs/{job['id']}/retry", headers=headers)
    assert r.status_code == 200 and r.json()["shards"] == [1]
    done = wait_for(api, headers, job["id"], cluster=cluster)
    assert done["status"] == "succeeded" and done["progress"]["done"] == 12
    after = {s.index: (s.status, s.attempts, s.finished_at) for s in shards_of(cluster, job["id"])}
    assert after[0] == before[0] and after[2] == before[2]  # untouched
    assert after[1][:2] == ("succeeded", 1)


def test_tenants_are_isolated_on_a_real_job(cluster, api, headers, undisturbed):
    other = make_key(cluster)
    jid = undisturbed["id"]
    for path in (f"/v1/jobs/{jid}", f"/v1/jobs/{jid}/samples", f"/v1/jobs/{jid}/exports",
                 f"/v1/jobs/{jid}/exports/coco"):
        assert api.get(path, headers=other).status_code == 404
    assert api.delete(f"/v1/jobs/{jid}", headers=other).status_code == 404
    assert api.get(f"/v1/jobs/{jid}", headers=headers).status_code == 200
