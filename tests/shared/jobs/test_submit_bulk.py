"""Submitting a big job writes its shard rows in one statement: nothing per shard crosses the
wire, so a 100,000-image job submits in well under a second (bench/submit.py measures it)."""
import uuid

import pytest
from sqlalchemy import event

from shared.config import Settings
from shared.db.session import UnitOfWork, make_engine, make_session_factory
from shared.jobs import repository as jobs_repo
from shared.jobs import usecases as jobs
from shared.tenants import repository as tenants_repo
from tests.support.fakes import RecordingDispatcher


@pytest.fixture
def factory(pg_url):
    engine = make_engine(pg_url)
    yield engine, make_session_factory(engine)
    engine.dispose()


def test_shard_rows_are_one_statement_with_a_few_parameters(factory, pg_url):
    engine, session_factory = factory
    settings = Settings(database_url=pg_url, storage="local", shard_size=8, max_images_per_job=100_000)
    spec = {"model": "builtin:tiny-random", "classes": ["cat"], "num_images": 20_003,
            "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 8}, "export": {"formats": ["coco"]}}
    with UnitOfWork(session_factory) as uow:
        tenant = tenants_repo.get_or_create_tenant(uow.session, f"bulk-{uuid.uuid4().hex[:8]}").id
    sent: list[tuple[str, int]] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        rows = parameters if executemany else [parameters]
        sent.append((statement.split()[0].upper(), sum(len(p or ()) for p in rows)))

    dispatcher = RecordingDispatcher()
    event.listen(engine, "before_cursor_execute", count)
    try:
        with UnitOfWork(session_factory) as uow:
            view, created = jobs.submit_job(uow, dispatcher, settings, tenant, spec)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert created and len(dispatcher.sent) == 2501
    writes = [(verb, n) for verb, n in sent if verb in ("INSERT", "UPDATE", "WITH")]
    assert sum(n for _, n in writes) < 100, writes  # not ~7 parameters per shard
    assert len(writes) <= 3, writes  # the job, the shards
    with UnitOfWork(session_factory) as uow:
        shards = jobs_repo.list_shards(uow.session, uuid.UUID(str(view.id)))
    assert [(s.index, s.start, s.stop) for s in shards[:2]] == [(0, 0, 8), (1, 8, 16)]
    assert (shards[-1].index, shards[-1].start, shards[-1].stop) == (2500, 20_000, 20_003)
    assert {s.status for s in shards} == {"queued"} and all(s.enqueued_at is not None for s in shards)
