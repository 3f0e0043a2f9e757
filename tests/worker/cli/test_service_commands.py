"""`dsgen keys/migrate/serve --embedded` and the client commands against a live embedded server."""
import threading
import time
from pathlib import Path

import pytest
import uvicorn
import yaml
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect

from shared.db.session import UnitOfWork, make_engine, make_session_factory
from shared.tenants import api_keys as auth
from tests.support.fakes import FakeEngine
from tests.support.services import free_port, postgres_database
from worker.cli import _register, cli

_register()

SPEC = {"name": "cats", "model": "builtin:tiny-random", "classes": [{"name": "cat"}], "num_images": 6,
        "generation": {"width": 16, "height": 16, "steps": 2, "batch_size": 2}, "export": {"formats": ["coco"]}}


def test_migrate_and_keys_create():
    runner = CliRunner()
    with postgres_database(migrate=False) as url:
        r = runner.invoke(cli, ["migrate", "--database-url", url])
        assert r.exit_code == 0, r.output
        assert "jobs" in inspect(create_engine(url)).get_table_names()
        r = runner.invoke(cli, ["keys", "create", "--tenant", "acme", "--database-url", url])
        assert r.exit_code == 0, r.output
        key = r.stdout.strip().splitlines()[0]
        engine = make_engine(url)
        with UnitOfWork(make_session_factory(engine)) as uow:
            assert auth.tenant_for_key(uow.session, key).name == "acme"
            assert auth.tenant_for_key(uow.session, key + "x") is None
        engine.dispose()
    r = runner.invoke(cli, ["keys", "create", "--tenant", "x", "--database-url", "postgresql+psycopg://postgres@127.0.0.1:1/x"])
    assert r.exit_code == 2 and "database unavailable" in r.output


def test_worker_refuses_unknown_queues():
    r = CliRunner().invoke(cli, ["worker", "--queues", "gpu,fast"])
    assert r.exit_code == 2 and "--queues" in r.output


@pytest.fixture
def embedded_server(tmp_path, monkeypatch):
    from worker.cli.service import build_embedded_app

    port = free_port()
    monkeypatch.delenv("DSGEN_API_KEY", raising=False)
    app = build_embedded_app(tmp_path / "data", port=port, engine_factory=FakeEngine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "embedded server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", tmp_path / "data"
    server.should_exit = True
    thread.join(timeout=10)


def test_embedded_mode_runs_a_job_end_to_end_with_the_client_commands(embedded_server, tmp_path):
    server, data = embedded_server
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    runner = CliRunner()
    r = runner.invoke(cli, ["submit", str(spec_file), "--server", server, "--wait"])
    assert r.exit_code == 0, r.output
    job_id = r.stdout.strip().splitlines()[0]
    assert (data / "dsgen.db").is_file()
    r = runner.invoke(cli, ["jobs", "list", "--server", server])
    assert job_id in r.stdout and "succeeded" in r.stdout
    r = runner.invoke(cli, ["jobs", "show", job_id, "--server", server])
    assert '"done": 6' in r.stdout
    r = runner.invoke(cli, ["pull", job_id, "--format", "coco", "--out", str(tmp_path / "pulled"), "--server", server])
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "pulled").rglob("instances_*.json"))
    r = runner.invoke(cli, ["jobs", "retry", job_id, "--server", server])
    assert r.exit_code == 2 and "only failed jobs can be retried (HTTP 409)" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SPEC, "num_images": 0}))
    r = runner.invoke(cli, ["submit", str(bad), "--server", server])
    assert r.exit_code == 2 and "num_images" in r.output


def test_client_reports_an_unreachable_server(tmp_path):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    r = CliRunner().invoke(cli, ["submit", str(spec_file), "--server", f"http://127.0.0.1:{free_port()}"])
    assert r.exit_code == 2 and "cannot reach" in r.output


def test_embedded_mode_resumes_a_job_left_by_a_previous_process(tmp_path):
    """Shards that a stopped process left 'running' are picked up at the next start."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.config import Settings
    from shared.db.models import Shard
    from tests.support.fakes import RecordingDispatcher
    from worker.cli.service import build_embedded_app

    data = tmp_path / "data"
    app = build_embedded_app(data, engine_factory=FakeEngine)  # migrates the database
    # first "process": accepts the job but never runs it (its dispatcher goes nowhere)
    first = create_app(Settings(database_url=f"sqlite:///{data / 'dsgen.db'}", storage="local",
                                local_storage_dir=data / "objects", embedded_tenant="local"),
                       dispatcher=RecordingDispatcher())
    with TestClient(first) as c:
        job_id = c.post("/v1/jobs", json=SPEC).json()["id"]
    engine = make_engine(f"sqlite:///{data / 'dsgen.db'}")
    with UnitOfWork(make_session_factory(engine)) as uow:
        uow.session.execute(Shard.__table__.update().where(Shard.index == 0).values(status="running", attempts=1))
    engine.dispose()
    with TestClient(app) as c:  # second process: embedded, picks the job up
        deadline = time.time() + 30
        while (job := c.get(f"/v1/jobs/{job_id}").json())["status"] != "succeeded":
            assert time.time() < deadline, job
            time.sleep(0.1)
    assert job["progress"]["done"] == 6
    assert Path(data / "objects").is_dir()


def test_embedded_mode_is_one_tenant_serves_the_builtin_models_and_docs_offline(embedded_server, tmp_path, monkeypatch):
    import httpx

    from shared.formats.model_meta import builtin_model_ids

    server, data = embedded_server
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    runner = CliRunner()
    r = runner.invoke(cli, ["keys", "create", "--tenant", "someone", "--database-url", f"sqlite:///{data / 'dsgen.db'}"])
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("DSGEN_API_KEY", r.stdout.strip().splitlines()[0])
    r = runner.invoke(cli, ["submit", str(spec_file), "--server", server])
    assert r.exit_code == 0, r.output
    job_id = r.stdout.strip().splitlines()[0]
    monkeypatch.delenv("DSGEN_API_KEY")
    assert job_id in runner.invoke(cli, ["jobs", "list", "--server", server]).stdout  # same tenant without a key
    assert httpx.get(f"{server}/v1/jobs", headers={"Authorization": "Bearer dsg_bad_key"}).status_code == 401
    models = [m["id"] for m in httpx.get(f"{server}/v1/models").json()["items"]]
    assert models == builtin_model_ids() and "builtin:shapes-v1" in models
    docs = httpx.get(f"{server}/docs").text
    assert "cdn." not in docs and "/docs-assets/swagger-ui-bundle.js" in docs
    js = httpx.get(f"{server}/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert httpx.get(f"{server}/docs-assets/swagger-ui.css").status_code == 200


def test_short_job_ids_are_accepted_when_unique(embedded_server, tmp_path):
    server, _ = embedded_server
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    runner = CliRunner()
    ids = [runner.invoke(cli, ["submit", str(spec_file), "--server", server]).stdout.strip() for _ in range(2)]
    a, b = ids
    shared_prefix = next(i for i in range(36) if a[i] != b[i])
    short = a[:max(8, shared_prefix + 1)]
    r = runner.invoke(cli, ["jobs", "show", short, "--server", server])
    assert r.exit_code == 0 and f'"id": "{a}"' in r.stdout, r.output
    r = runner.invoke(cli, ["jobs", "show", short.upper(), "--server", server])
    assert r.exit_code == 0
    if shared_prefix:  # both start with the same characters: ambiguous
        r = runner.invoke(cli, ["jobs", "show", a[:shared_prefix], "--server", server])
        assert r.exit_code == 2 and "several job ids" in r.output
    r = runner.invoke(cli, ["jobs", "cancel", "zz", "--server", server])
    assert r.exit_code == 2 and "neither a job id" in r.output
    missing = "f" * 8 if not a.startswith("ffffffff") and not b.startswith("ffffffff") else "0" * 8
    r = runner.invoke(cli, ["jobs", "show", missing, "--server", server])
    assert r.exit_code == 2 and "no job of this tenant" in r.output
