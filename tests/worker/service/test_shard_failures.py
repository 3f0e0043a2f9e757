"""How a shard attempt ends when something goes wrong: a deterministic error fails it at once
(no retry), a database blip gives the shard back and retries the task with backoff, and a
superseded attempt writes nothing."""
import pickle

import pytest
from sqlalchemy import update

from shared.db.models import Shard
from shared.dispatch.tasks import SHARD_TASK
from shared.errors import ServiceUnavailable, TooManyRequests
from shared.formats.spec import SpecError
from shared.jobs import repository as jobs_repo
from tests.support.fakes import FakeEngine, FakeSample
from worker.service.shards import run_shard


def broken_engine(error):
    class Broken:
        def __init__(self, spec):
            pass

        def generate(self, indexes):
            raise error
            yield  # pragma: no cover

    return Broken


class NotRetryable(RuntimeError):
    retryable = False


@pytest.mark.parametrize("error", [SpecError("prompts: 'dog' is not in this model's vocabulary", field="prompts"),
                                   NotRetryable("the source image is corrupt")])
def test_a_deterministic_error_fails_the_shard_without_a_retry(ctx, submit, error):
    job = submit(num_images=4)
    ctx.engine_factory = broken_engine(error)
    assert run_shard(ctx, job, 0) == "failed"  # max_attempts is 2: not "requeued"
    assert ctx.dispatcher.sent == []
    with ctx.uow() as uow:
        shard = jobs_repo.get_shard(uow.session, job, 0)
        assert shard.status == "failed" and shard.attempts == 1 and str(error) in shard.error
        assert jobs_repo.get_job(uow.session, job).status == "failed"


def test_a_database_blip_gives_the_shard_back_and_is_raised_for_a_retry(ctx, submit):
    job = submit(num_images=4)
    ctx.engine_factory = broken_engine(ServiceUnavailable("database", "connection refused"))
    with pytest.raises(ServiceUnavailable):
        run_shard(ctx, job, 0)
    with ctx.uow() as uow:
        shard = jobs_repo.get_shard(uow.session, job, 0)
        assert shard.status == "queued" and shard.attempts == 0  # the attempt was not spent
    ctx.engine_factory = FakeEngine
    assert run_shard(ctx, job, 0) == "succeeded"


def test_the_shard_task_retries_on_service_unavailable_instead_of_acking(monkeypatch):
    import worker.service.shards as shards
    from worker import tasks
    from worker.celery_app import app

    calls = []

    def flaky(ctx, job_id, index):
        calls.append(index)
        if len(calls) < 3:
            raise ServiceUnavailable("database", "the database system is starting up")
        return "succeeded"

    monkeypatch.setattr(shards, "run_shard", flaky)
    monkeypatch.setattr(tasks, "context_for", lambda app: None)
    task = app.tasks[SHARD_TASK]
    assert ServiceUnavailable in task.autoretry_for and task.retry_backoff
    result = task.apply(args=("00000000-0000-0000-0000-000000000001", 0))
    assert result.get() == "succeeded" and len(calls) == 3


def test_service_errors_survive_pickling():
    for err in (ServiceUnavailable("database", "connection refused"), TooManyRequests("slow down", retry_after_s=7)):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.__dict__ == err.__dict__
    assert pickle.loads(pickle.dumps(ServiceUnavailable("storage", "503"))).component == "storage"


def test_a_superseded_attempt_writes_no_rows(ctx, submit):
    job = submit(num_images=2)  # one batch (batch_size 2): no heartbeat check after it

    class Superseded:
        def __init__(self, spec):
            self.spec = spec

        def generate(self, indexes):
            # While this attempt generates, its heartbeat times out and another worker claims it.
            with ctx.uow() as uow:
                uow.session.execute(update(Shard).where(Shard.job_id == job, Shard.index == 0)
                                    .values(attempts=Shard.attempts + 1, worker="other"))
            for i in indexes:
                yield FakeSample(i, self.spec.seed)

    ctx.engine_factory = Superseded
    assert run_shard(ctx, job, 0) == "lost"
    with ctx.uow() as uow:
        assert jobs_repo.existing_sample_indexes(uow.session, job, 0, 2) == set()
        assert jobs_repo.get_shard(uow.session, job, 0).status == "running"  # the new owner's
