"""The status cache: polls reuse the serialised view only while nothing it shows has changed."""
import copy
import uuid

from api_spec import SPEC
from sqlalchemy import update

from api.status_cache import StatusCache
from shared.db.models import Job, Shard
from shared.db.session import UnitOfWork
from shared.jobs import usecases as jobs_module

KEY = (uuid.UUID(int=1), uuid.UUID(int=2))


class Loads:
    def __init__(self, final: bool = False):
        self.n, self.final = 0, final

    def __call__(self) -> tuple[bytes, bool]:
        self.n += 1
        return f"view {self.n}".encode(), self.final


def test_a_matching_stamp_reuses_the_bytes_a_new_one_reloads():
    cache, load = StatusCache(60), Loads()
    assert cache.read(KEY, lambda: "a", load) == b"view 1"
    assert cache.read(KEY, lambda: "a", load) == b"view 1" and load.n == 1
    assert cache.read(KEY, lambda: "b", load) == b"view 2"
    assert cache.read((KEY[1], KEY[0]), lambda: "b", load) == b"view 3"  # another tenant/job: its own entry


def test_no_stamp_or_no_cache_always_reads():
    load = Loads()
    cache = StatusCache(60)
    cache.read(KEY, lambda: None, load)
    cache.read(KEY, lambda: None, load)
    off = StatusCache(0)
    off.read(KEY, lambda: "a", load)
    off.read(KEY, lambda: "a", load)
    assert load.n == 4


def test_a_running_jobs_entry_ages_out_a_finished_ones_does_not(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("api.status_cache.time.monotonic", lambda: clock[0])
    running, finished = Loads(final=False), Loads(final=True)
    cache = StatusCache(1.0)
    cache.read(KEY, lambda: "a", running)
    cache.read((KEY[1], KEY[0]), lambda: "a", finished)
    clock[0] += 1.5  # past max_age: the running job's rate and ETA depend on the clock
    cache.read(KEY, lambda: "a", running)
    cache.read((KEY[1], KEY[0]), lambda: "a", finished)
    assert running.n == 2 and finished.n == 1


def test_the_cache_holds_at_most_max_bytes_oldest_out_first():
    cache = StatusCache(60, max_bytes=25)
    keys = [(uuid.UUID(int=i), uuid.UUID(int=i)) for i in range(4)]
    loads = [Loads() for _ in keys]  # each view is 6 bytes ("view 1")
    for k, load in zip(keys, loads):
        cache.read(k, lambda: "a", load)
    for k, load in zip(keys, loads):  # 4 x 6 bytes fit in 25: all still served from memory
        cache.read(k, lambda: "a", load)
    assert [x.n for x in loads] == [1, 1, 1, 1]
    fifth = Loads()
    cache.read((uuid.UUID(int=9), uuid.UUID(int=9)), lambda: "a", fifth)  # 30 bytes > 25: the oldest entry goes
    cache.read(keys[0], lambda: "a", loads[0])
    cache.read(keys[3], lambda: "a", loads[3])
    assert loads[0].n == 2 and loads[3].n == 1


def _submit(client, headers) -> str:
    r = client.post("/v1/jobs", json=copy.deepcopy(SPEC), headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_polls_see_every_write_at_once_and_read_the_view_only_after_one(client, headers, session_factory,
                                                                         monkeypatch):
    job_id = _submit(client, headers)
    reads = []
    real = jobs_module.get_job_json
    monkeypatch.setattr(jobs_module, "get_job_json", lambda *a: reads.append(1) or real(*a))
    first = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    for _ in range(5):
        assert client.get(f"/v1/jobs/{job_id}", headers=headers).json() == first
    assert len(reads) == 1  # five polls of an unchanged job: the stored bytes

    # A worker (another process) writes progress, then the job's status: each shows on the next poll.
    with UnitOfWork(session_factory) as uow:
        uow.session.execute(update(Shard).where(Shard.job_id == uuid.UUID(job_id), Shard.index == 0)
                            .values(done=3, status="running"))
    got = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert got["progress"]["done"] == 3 and got["progress"]["shards"] == {"running": 1, "queued": 1}
    with UnitOfWork(session_factory) as uow:
        uow.session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(status="running"))
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).json()["status"] == "running"
    assert len(reads) == 3

    # Cancelling through the API and deleting a row elsewhere: no poll shows the state before.
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).json()["cancel_requested"] is True
    with UnitOfWork(session_factory) as uow:
        uow.session.execute(Job.__table__.delete().where(Job.id == uuid.UUID(job_id)))
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 404


def test_another_tenant_never_reads_a_cached_view(client, headers, session_factory):
    from shared.tenants import api_keys as auth

    job_id = _submit(client, headers)
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
    with UnitOfWork(session_factory) as uow:
        _, other_key = auth.create_api_key(uow.session, f"other-{uuid.uuid4().hex[:8]}")
    other = {"Authorization": f"Bearer {other_key}"}
    r = client.get(f"/v1/jobs/{job_id}", headers=other)
    assert r.status_code == 404 and r.json()["field"] == "job_id"


def test_the_body_is_the_same_with_the_cache_on_or_off(settings, dispatcher, store, session_factory, headers):
    """Cached or not, the body is JobView's JSON (what the route's response_model documents)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.jobs.views import JobView

    bodies = []
    job_id = None
    for ttl in (1.0, 0.0):
        app = create_app(settings.model_copy(update={"api_status_cache_s": ttl}), dispatcher=dispatcher, store=store,
                         session_factory=session_factory)
        with TestClient(app) as c:
            job_id = job_id or _submit(c, headers)
            for _ in range(2):
                r = c.get(f"/v1/jobs/{job_id}", headers=headers)
                assert r.headers["content-type"] == "application/json"
                bodies.append(r.json())
    assert bodies[0] == bodies[1] == bodies[2] == bodies[3]
    view = JobView.model_validate(bodies[0])
    assert str(view.id) == job_id and view.progress.total == SPEC["num_images"]
