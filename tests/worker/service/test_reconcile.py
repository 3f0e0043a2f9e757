import datetime as dt

from shared.db.models import Job, Shard, utcnow
from shared.dispatch.tasks import FINALIZE_TASK, SHARD_TASK
from shared.jobs import repository as jobs_repo
from worker.service.reconcile import reconcile
from worker.service.shards import run_shard


def mine(items, job):
    """The reconciler looks at every job of the database: keep this test's."""
    return [x for x in items if str(job) in repr(x)]


def _set_shard(ctx, job, index, **values):
    with ctx.uow() as uow:
        uow.session.execute(Shard.__table__.update().where(Shard.job_id == job, Shard.index == index).values(**values))


def test_a_shard_whose_worker_died_is_sent_again(ctx, submit):
    job = submit()
    _set_shard(ctx, job, 0, status="running", attempts=1, heartbeat_at=utcnow() - dt.timedelta(minutes=5))
    report = reconcile(ctx, queue_depth=lambda q: 5)
    assert mine(report.resent_stale, job) == [(str(job), 0)]
    assert mine(ctx.dispatcher.sent, job) == [(SHARD_TASK, (str(job), 0))]
    assert run_shard(ctx, job, 0) == "succeeded"


def test_a_dead_shard_at_the_attempt_cap_fails(ctx, submit):
    job = submit(num_images=4)
    _set_shard(ctx, job, 0, status="running", attempts=2, heartbeat_at=utcnow() - dt.timedelta(minutes=5))
    report = reconcile(ctx, queue_depth=lambda q: 0)
    assert mine(report.failed_stale, job) == [(str(job), 0)]
    with ctx.uow() as uow:
        assert jobs_repo.get_job(uow.session, job).status == "failed"


def test_queued_shards_are_resent_only_when_the_broker_lost_them(ctx, submit):
    job = submit()
    assert mine(reconcile(ctx, queue_depth=lambda q: 3).resent_lost, job) == []  # still in the queue
    report = reconcile(ctx, queue_depth=lambda q: 0)  # queue emptied (Redis flushed)
    assert mine(report.resent_lost, job) == [(str(job), 0), (str(job), 1)]
    assert sorted(a for n, a in mine(ctx.dispatcher.sent, job) if n == SHARD_TASK) == [(str(job), 0), (str(job), 1)]


def test_a_running_shard_with_a_fresh_heartbeat_is_left_alone(ctx, submit):
    job = submit()
    _set_shard(ctx, job, 0, status="running", attempts=1, heartbeat_at=utcnow())
    report = reconcile(ctx, queue_depth=lambda q: 0)
    assert (str(job), 0) not in report.resent_stale + report.resent_lost


def test_a_cancelled_job_s_lost_shards_are_cancelled_not_resent(ctx, submit):
    job = submit()
    with ctx.uow() as uow:
        uow.session.execute(Job.__table__.update().where(Job.id == job).values(cancel_requested=True, status="cancelling"))
    report = reconcile(ctx, queue_depth=lambda q: 0)
    assert sorted(mine(report.cancelled, job)) == [(str(job), 0), (str(job), 1)]
    assert mine(ctx.dispatcher.sent, job) == []
    with ctx.uow() as uow:
        assert jobs_repo.get_job(uow.session, job).status == "cancelled"


def test_jobs_with_all_shards_done_are_settled_and_stalled_finalize_resent(ctx, submit):
    job = submit()
    run_shard(ctx, job, 0)
    run_shard(ctx, job, 1)
    ctx.dispatcher.sent.clear()
    with ctx.uow() as uow:  # as if the finalize message was lost long ago
        uow.session.execute(Job.__table__.update().where(Job.id == job)
                            .values(finalize_heartbeat_at=utcnow() - dt.timedelta(hours=2)))
    report = reconcile(ctx, queue_depth=lambda q: 0)
    assert mine(report.finalize_resent, job) == [str(job)]
    assert mine(ctx.dispatcher.sent, job) == [(FINALIZE_TASK, (str(job),))]
    # and a job left running with every shard finished is moved on
    job2 = submit(num_images=2)
    _set_shard(ctx, job2, 0, status="failed", attempts=1, error="x")
    report = reconcile(ctx, queue_depth=lambda q: 0)
    assert str(job2) in report.settled
