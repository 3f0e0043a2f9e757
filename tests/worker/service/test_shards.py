import datetime as dt

from shared.db.models import Sample, Shard, utcnow
from shared.dispatch.tasks import FINALIZE_TASK, SHARD_TASK
from shared.jobs import repository as jobs_repo
from shared.storage import keys
from tests.support.fakes import FakeEngine
from worker.service.shards import run_shard


def test_a_shard_writes_objects_and_rows_then_finishes(ctx, submit):
    job = submit()
    assert run_shard(ctx, job, 0) == "succeeded"
    assert FakeEngine.calls == [[0, 1], [2, 3]]  # batch by batch
    with ctx.uow() as uow:
        rows = jobs_repo.list_samples(uow.session, job)
        anns = jobs_repo.annotations_for(uow.session, job, [0, 1, 2, 3])
        shard = jobs_repo.get_shard(uow.session, job, 0)
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert all(len(a) == 1 for a in anns.values())
    assert shard.status == "succeeded" and shard.attempts == 1 and shard.worker == "test-worker"
    for r in rows:
        for key in (r.image_key, r.semantic_key, r.instances_key, r.overlay_key, r.record_key):
            assert ctx.store.exists(key)
    assert rows[0].image_key == keys.sample_key(job, 0, 4, "image.png")


def test_the_last_shard_sends_finalize_once(ctx, submit):
    job = submit()
    run_shard(ctx, job, 0)
    assert ctx.dispatcher.sent == []
    run_shard(ctx, job, 1)
    assert ctx.dispatcher.sent == [(FINALIZE_TASK, (str(job),))]
    assert run_shard(ctx, job, 1) == "done"  # a duplicate delivery changes nothing
    assert len(ctx.dispatcher.sent) == 1


def test_a_rerun_after_a_crash_resumes_and_writes_no_duplicates(ctx, submit):
    job = submit()
    run_shard(ctx, job, 0)
    before = sorted(ctx.store.list(keys.job_prefix(job)))
    fragment = ctx.store.get(keys.fragment_key(job, 0))
    # pretend the worker died during the second batch of shard 0: its objects were written,
    # its rows were not
    with ctx.uow() as uow:
        uow.session.execute(Shard.__table__.update().where(Shard.job_id == job, Shard.index == 0)
                            .values(status="running", heartbeat_at=utcnow() - dt.timedelta(hours=1)))
        uow.session.execute(Sample.__table__.delete().where(Sample.job_id == job, Sample.index >= 2))
    FakeEngine.calls = []
    assert run_shard(ctx, job, 0) == "succeeded"
    assert FakeEngine.calls == [[2, 3]]  # only what was missing
    assert sorted(ctx.store.list(keys.job_prefix(job))) == before
    assert ctx.store.get(keys.fragment_key(job, 0)) == fragment  # samples 0, 1 fetched back, same export
    with ctx.uow() as uow:
        assert jobs_repo.count_samples(uow.session, job) == 4
        assert jobs_repo.get_shard(uow.session, job, 0).attempts == 2


def test_cancel_is_seen_between_batches(ctx, submit):
    job = submit(num_images=8)
    from shared.db.models import Job

    class CancelledDuringFirstBatch(FakeEngine):
        def generate(self, indexes):
            if indexes[0] == 0:  # the user cancels while the first batch is generated
                with ctx.uow() as uow:
                    uow.session.execute(Job.__table__.update().where(Job.id == job).values(cancel_requested=True))
            yield from super().generate(indexes)

    ctx.engine_factory = CancelledDuringFirstBatch
    assert run_shard(ctx, job, 0) == "cancelled"
    assert FakeEngine.calls == [[0, 1]]  # no batch started after the flag
    with ctx.uow() as uow:
        assert jobs_repo.count_samples(uow.session, job) == 2  # what was done is kept
        assert jobs_repo.get_shard(uow.session, job, 0).status == "cancelled"


def test_a_failed_object_write_fails_the_attempt_and_writes_no_rows(ctx, submit):
    job = submit(num_images=4)

    class FailingStore:
        def __init__(self, inner):
            self.inner = inner

        def put(self, key, data):
            if "000003" in key:
                raise OSError("disk full")
            self.inner.put(key, data)

    ctx.store = FailingStore(ctx.store)
    assert run_shard(ctx, job, 0) == "requeued"
    with ctx.uow() as uow:
        assert jobs_repo.existing_sample_indexes(uow.session, job, 0, 4) == {0, 1}  # batch [2, 3] has no rows
        assert "disk full" in jobs_repo.get_shard(uow.session, job, 0).error


def test_an_error_is_retried_then_fails_at_the_cap(ctx, submit):
    job = submit(num_images=4)

    class Broken:
        def __init__(self, spec):
            pass

        def generate(self, indexes):
            raise RuntimeError("CUDA out of memory")

    ctx.engine_factory = Broken
    assert run_shard(ctx, job, 0) == "requeued"
    assert ctx.dispatcher.sent == [(SHARD_TASK, (str(job), 0))]
    assert run_shard(ctx, job, 0) == "failed"  # max_attempts=2
    with ctx.uow() as uow:
        j = jobs_repo.get_job(uow.session, job)
        assert j.status == "failed" and "CUDA out of memory" in j.error
