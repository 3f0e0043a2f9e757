"""Worker domain tests: real Postgres, a local object store and a fake engine (fast and
deterministic, same interface as `worker.engine.session.EngineSession`)."""
from __future__ import annotations

import json
import uuid

import pytest

from shared.config import Settings
from shared.db.session import UnitOfWork, make_engine, make_session_factory
from shared.jobs import usecases as jobs
from shared.storage.objects import LocalStore
from shared.tenants import api_keys as auth
from tests.support.fakes import FakeEngine, RecordingDispatcher
from tests.support.services import postgres_database
from worker.service.context import WorkerContext

SPEC = {"model": "builtin:tiny-random", "classes": [{"name": "cat"}, {"name": "dog"}], "num_images": 6,
        "generation": {"width": 16, "height": 16, "steps": 2, "batch_size": 2},
        "export": {"formats": ["coco", "yolo"]}}


@pytest.fixture(scope="session")
def pg_url():
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def session_factory(pg_url):
    engine = make_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def ctx(session_factory, tmp_path):
    FakeEngine.calls = []
    settings = Settings(shard_size=4, max_attempts=2, heartbeat_interval_s=0.2, heartbeat_timeout_s=30,
                        requeue_grace_s=0, storage="local", local_storage_dir=tmp_path / "objects")
    store = LocalStore(tmp_path / "objects", base_url="http://x", secret="s")
    return WorkerContext(settings=settings, session_factory=session_factory, store=store,
                         dispatcher=RecordingDispatcher(), engine_factory=FakeEngine, worker_name="test-worker")


@pytest.fixture
def tenant(session_factory):
    with UnitOfWork(session_factory) as uow:
        t, _ = auth.create_api_key(uow.session, f"t-{uuid.uuid4().hex[:8]}")
    return t.id


@pytest.fixture
def submit(ctx, tenant):
    def _submit(**overrides):
        spec = json.loads(json.dumps(SPEC))
        spec.update(overrides)
        with ctx.uow() as uow:
            view, _ = jobs.submit_job(uow, ctx.dispatcher, ctx.settings, tenant, spec)
        ctx.dispatcher.sent.clear()
        return view.id

    return _submit
