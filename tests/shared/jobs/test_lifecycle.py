"""Job/shard state machine against real Postgres: CAS transitions, last-shard detection."""
import datetime as dt
import threading
import uuid

import pytest

from shared.config import Settings
from shared.db.models import utcnow
from shared.db.session import UnitOfWork, make_engine, make_session_factory
from shared.dispatch.tasks import FINALIZE_TASK, SHARD_TASK
from shared.jobs import repository as jobs_repo
from shared.jobs import usecases as jobs
from shared.jobs.lifecycle import claim_shard, finish_shard, heartbeat
from shared.tenants import api_keys as auth
from tests.support.fakes import RecordingDispatcher

SPEC = {"model": "builtin:tiny-random", "classes": [{"name": "cat"}], "num_images": 10,
        "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 2}}


@pytest.fixture(scope="module")
def sf(pg_url):
    engine = make_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def env(sf):
    settings = Settings(shard_size=3, max_attempts=2)
    d = RecordingDispatcher()
    with UnitOfWork(sf) as uow:
        tenant, _ = auth.create_api_key(uow.session, f"t-{uuid.uuid4().hex[:8]}")
    return settings, d, tenant.id


def submit(sf, env, spec=SPEC):
    settings, d, tenant = env
    with UnitOfWork(sf) as uow:
        view, created = jobs.submit_job(uow, d, settings, tenant, dict(spec))
    return view


def claim(sf, d, job_id, i, worker="w1", stale_s=60.0, max_attempts=2):
    with UnitOfWork(sf) as uow:
        return claim_shard(uow, d, job_id, i, worker=worker, max_attempts=max_attempts,
                           stale_before=utcnow() - dt.timedelta(seconds=stale_s))


def test_submit_writes_job_and_whole_batch_shards_then_sends_them(sf, env):
    _, d, _ = env
    view = submit(sf, env)
    # shard size 3 rounded up to whole batches of 2 -> 4: shards [0,4) [4,8) [8,10)
    assert [(s.start, s.stop) for s in view.shard_list] == [(0, 4), (4, 8), (8, 10)]
    assert [a for n, a in d.sent if n == SHARD_TASK] == [(str(view.id), 0), (str(view.id), 1), (str(view.id), 2)]
    assert view.status == "queued" and view.progress.total == 10


def test_nothing_is_sent_when_the_transaction_rolls_back(sf, env):
    settings, d, tenant = env
    with pytest.raises(RuntimeError):
        with UnitOfWork(sf) as uow:
            jobs.submit_job(uow, d, settings, tenant, dict(SPEC))
            raise RuntimeError("boom after the insert")
    assert d.sent == []
    with UnitOfWork(sf) as uow:
        assert jobs_repo.count_active_jobs(uow.session, tenant) == 0


def test_a_duplicate_delivery_does_not_run_a_shard_twice(sf, env):
    _, d, _ = env
    job = submit(sf, env)
    first = claim(sf, d, job.id, 0)
    assert first.attempt == 1
    assert claim(sf, d, job.id, 0, worker="w2") == "busy"
    with UnitOfWork(sf) as uow:
        assert finish_shard(uow, d, first, "succeeded")
    assert claim(sf, d, job.id, 0, worker="w2") == "done"


def test_a_stale_shard_is_taken_over_and_the_old_attempt_is_fenced(sf, env):
    _, d, _ = env
    job = submit(sf, env)
    old = claim(sf, d, job.id, 1)
    new = claim(sf, d, job.id, 1, worker="w2", stale_s=-1)  # every heartbeat counts as stale
    assert new.attempt == 2
    with UnitOfWork(sf) as uow:
        assert heartbeat(uow.session, old) == (False, False)
        assert not finish_shard(uow, d, old, "succeeded")
        assert finish_shard(uow, d, new, "succeeded")


def test_the_attempt_cap_fails_the_shard_and_the_job(sf, env):
    _, d, _ = env
    job = submit(sf, env, {**SPEC, "num_images": 4})
    claim(sf, d, job.id, 0, max_attempts=2)
    claim(sf, d, job.id, 0, worker="w2", stale_s=-1, max_attempts=2)
    assert claim(sf, d, job.id, 0, worker="w3", stale_s=-1, max_attempts=2) == "gave-up"
    with UnitOfWork(sf) as uow:
        j = jobs_repo.get_job(uow.session, job.id)
        assert j.status == "failed" and "1 of 1 shard(s) failed" in j.error


def test_exactly_one_finalize_when_the_last_shards_finish_together(sf, env):
    _, d, _ = env
    for _round in range(5):
        job = submit(sf, env, {**SPEC, "num_images": 8})  # 2 shards
        claims = [claim(sf, d, job.id, i) for i in (0, 1)]
        barrier = threading.Barrier(2)

        def finish(c, barrier=barrier):
            barrier.wait()
            with UnitOfWork(sf) as uow:
                finish_shard(uow, d, c, "succeeded")

        threads = [threading.Thread(target=finish, args=(c,)) for c in claims]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert [a for n, a in d.sent if n == FINALIZE_TASK].count((str(job.id),)) == 1
        with UnitOfWork(sf) as uow:
            assert jobs_repo.get_job(uow.session, job.id).status == "finalizing"


def test_cancel_stops_unstarted_shards_and_waits_for_running_ones(sf, env):
    _, d, tenant = env
    job = submit(sf, env)
    running = claim(sf, d, job.id, 0)
    with UnitOfWork(sf) as uow:
        view = jobs.cancel_job(uow, d, tenant, job.id)
    assert view.status == "cancelling" and view.progress.shards == {"running": 1, "cancelled": 2}
    with UnitOfWork(sf) as uow:
        assert heartbeat(uow.session, running) == (True, True)  # the worker sees the flag
        finish_shard(uow, d, running, "cancelled")
    with UnitOfWork(sf) as uow:
        assert jobs_repo.get_job(uow.session, job.id).status == "cancelled"


def test_retry_resets_only_failed_shards(sf, env):
    _, d, tenant = env
    job = submit(sf, env)
    c = [claim(sf, d, job.id, i) for i in range(3)]
    with UnitOfWork(sf) as uow:
        finish_shard(uow, d, c[0], "succeeded")
        finish_shard(uow, d, c[1], "failed", "boom")
        finish_shard(uow, d, c[2], "succeeded")
    d.sent.clear()
    with UnitOfWork(sf) as uow:
        assert jobs_repo.get_job(uow.session, job.id).status == "failed"
        result = jobs.retry_job(uow, d, tenant, job.id)
    assert result.shards == [1] and d.sent == [(SHARD_TASK, (str(job.id), 1))]
    states = {s.index: (s.status, s.attempts) for s in result.job.shard_list}
    assert states == {0: ("succeeded", 1), 1: ("queued", 0), 2: ("succeeded", 1)}
    assert result.job.status == "running"


def test_retry_after_a_failed_finalisation_finalises_again(sf, env):
    from shared.db.models import Job
    from shared.jobs.lifecycle import finish_job

    _, d, tenant = env
    job = submit(sf, env, {**SPEC, "num_images": 4})
    with UnitOfWork(sf) as uow:
        finish_shard(uow, d, claim(sf, d, job.id, 0), "succeeded")
    with UnitOfWork(sf) as uow:
        uow.session.execute(Job.__table__.update().where(Job.id == job.id).values(finalize_attempts=2))
        finish_job(uow, job.id, ok=False, error="finalize failed")
    d.sent.clear()
    with UnitOfWork(sf) as uow:
        result = jobs.retry_job(uow, d, tenant, job.id)
    assert result.shards == [] and result.job.status == "finalizing"
    assert d.sent == [(FINALIZE_TASK, (str(job.id),))]
    with UnitOfWork(sf) as uow:
        assert jobs_repo.get_job(uow.session, job.id).finalize_attempts == 1
