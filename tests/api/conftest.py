"""API tests: the real app (TestClient over ASGI), real Postgres, a local object store and a
dispatcher that records what would be sent (the worker side is tested elsewhere)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # helper modules next to this file, whatever the import mode

import uuid

import pytest
from api_spec import SPEC  # noqa: F401  (a uniquely named module: `conftest` names clash across folders)
from fastapi.testclient import TestClient

from api.app import create_app
from shared.config import Settings
from shared.db.session import UnitOfWork, make_engine, make_session_factory
from shared.storage.objects import LocalStore
from shared.tenants import api_keys as auth
from tests.support.fakes import FakeEngine, RecordingDispatcher
from tests.support.services import postgres_database


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
def settings(pg_url, tmp_path):
    return Settings(database_url=pg_url, storage="local", local_storage_dir=tmp_path / "objects",
                    public_base_url="http://testserver", shard_size=4, max_active_jobs_per_tenant=3,
                    max_images_per_job=1000, max_steps=50, max_resolution=512, max_classes=5,
                    max_prompt_length=100, requeue_grace_s=0)


@pytest.fixture
def dispatcher():
    return RecordingDispatcher()


@pytest.fixture
def store(settings):
    return LocalStore(settings.local_storage_dir, base_url=settings.public_base_url, secret=settings.signing_secret)


@pytest.fixture
def client(settings, dispatcher, store, session_factory):
    app = create_app(settings, dispatcher=dispatcher, store=store, session_factory=session_factory)
    with TestClient(app) as c:
        yield c


def new_key(session_factory, tenant: str | None = None) -> str:
    with UnitOfWork(session_factory) as uow:
        _, key = auth.create_api_key(uow.session, tenant or f"tenant-{uuid.uuid4().hex[:8]}")
    return key


@pytest.fixture
def key(session_factory):
    return new_key(session_factory)


@pytest.fixture
def headers(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def other_headers(session_factory):
    return {"Authorization": f"Bearer {new_key(session_factory)}"}


@pytest.fixture
def run_job(settings, dispatcher, store, session_factory):
    """Run a submitted job to the end in-process (worker domain + fake engine)."""
    from worker.service.context import WorkerContext
    from worker.service.finalize import finalize_job
    from worker.service.shards import run_shard

    def _run(job_id: str, shards=None, finalize=True):
        ctx = WorkerContext(settings=settings, session_factory=session_factory, store=store,
                            dispatcher=dispatcher, engine_factory=FakeEngine)
        jid = uuid.UUID(job_id)
        with UnitOfWork(session_factory) as uow:
            from shared.jobs import repository as jobs_repo

            indexes = [s.index for s in jobs_repo.list_shards(uow.session, jid)]
        for i in shards if shards is not None else indexes:
            run_shard(ctx, jid, i)
        if finalize:
            finalize_job(ctx, jid)

    return _run
