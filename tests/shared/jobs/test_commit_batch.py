"""A shard's batch in one statement: rows, annotations (stale ones gone) and shard progress."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import event

from shared.config import Settings
from shared.db.session import UnitOfWork, make_engine, make_session_factory
from shared.jobs import repository as jobs_repo
from shared.jobs import usecases as jobs
from shared.tenants import api_keys as auth
from tests.support.fakes import RecordingDispatcher
from tests.support.services import postgres_database


@pytest.fixture(scope="module")
def engine():
    with postgres_database() as url:
        eng = make_engine(url)
        yield eng
        eng.dispose()


def _job(factory):
    settings = Settings(shard_size=4, models=["builtin:tiny-random"])
    with UnitOfWork(factory) as uow:
        tenant, _ = auth.create_api_key(uow.session, f"t-{uuid.uuid4().hex[:6]}")
        tid = tenant.id
    with UnitOfWork(factory) as uow:
        view, _ = jobs.submit_job(uow, RecordingDispatcher(), settings, tid, {
            "model": "builtin:tiny-random", "classes": [{"name": "cat"}], "num_images": 8,
            "generation": {"width": 16, "height": 16, "steps": 2, "batch_size": 2}})
    return view.id


def _rows(job_id, indexes, instances):
    from shared.db.models import utcnow

    now = utcnow()
    samples = [{"job_id": job_id, "index": i, "shard_index": i // 4, "seed": i, "prompt": "p", "negative_prompt": "",
                "image_key": f"k{i}", "semantic_key": None, "instances_key": None, "overlay_key": None,
                "record_key": f"r{i}", "quality": {}, "lineage": {}, "record": {}, "attempt": 1,
                "created_at": now, "updated_at": now} for i in indexes]
    anns = [{"job_id": job_id, "sample_index": i, "instance_id": k, "category": "cat", "category_id": 1,
             "bbox": [0, 0, 1, 1], "area": 1.0, "score": 1.0, "source": "attention", "rle": None, "polygons": []}
            for i in indexes for k in range(1, instances + 1)]
    return samples, anns


def test_one_statement_per_batch_keeps_rows_annotations_and_progress(engine):
    factory = make_session_factory(engine)
    job = _job(factory)
    statements = []
    listener = lambda *a, **k: statements.append(a[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        with UnitOfWork(factory) as uow:
            jobs_repo.commit_batch(uow.session, (job, 0, 0, 4), *_rows(job, [0, 1], instances=3))
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert len([s for s in statements if not s.strip().upper().startswith(("BEGIN", "COMMIT"))]) == 1
    with UnitOfWork(factory) as uow:
        jobs_repo.commit_batch(uow.session, (job, 0, 0, 4), *_rows(job, [1, 2], instances=1))  # a re-run of 1, and 2
        assert jobs_repo.get_shard(uow.session, job, 0).done == 3
        anns = jobs_repo.annotations_for(uow.session, job, [0, 1, 2])
        assert [len(anns[i]) for i in (0, 1, 2)] == [3, 1, 1]  # sample 1's stale instances 2, 3 are gone
        assert jobs_repo.count_samples(uow.session, job) == 3
    with UnitOfWork(factory) as uow:
        jobs_repo.commit_batch(uow.session, (job, 0, 0, 4), *_rows(job, [0, 1, 2, 3], instances=0))
        assert jobs_repo.get_shard(uow.session, job, 0).done == 4
        assert sum(len(v) for v in jobs_repo.annotations_for(uow.session, job, [0, 1, 2, 3]).values()) == 0
