"""A backing server down -> 503 naming it, never a 500, never a half-written job.
"Down" is simulated by pointing the app at a closed port (the shared servers keep running)."""
import time

from fastapi.testclient import TestClient

from api.app import create_app
from shared.db.models import Job
from shared.db.session import UnitOfWork
from tests.support.fakes import RecordingDispatcher
from tests.support.services import closed_port, s3_env

from api_spec import SPEC


def test_postgres_down_is_503(settings, store, headers):
    down = settings.model_copy(update={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/x"})
    with TestClient(create_app(down, dispatcher=RecordingDispatcher(), store=store)) as client:
        started = time.time()
        for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/models")]:
            r = client.request(method, path, headers=headers, json=SPEC if method == "POST" else None)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["detail"].startswith("database unavailable")
            assert r.headers["retry-after"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
        assert ready.json()["checks"]["storage"] == "ok"
        assert client.get("/healthz").status_code == 200
        assert time.time() - started < 30
        assert 'dsgen_unavailable_total{component="database"}' in client.get("/metrics").text


def test_broker_down_is_503_and_writes_nothing(settings, store, session_factory, headers, key):
    down = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{closed_port()}/0"})
    with TestClient(create_app(down, store=store, session_factory=session_factory)) as client:
        r = client.post("/v1/jobs", json=SPEC, headers=headers)
        assert r.status_code == 503 and r.json()["detail"].startswith("broker unavailable")
        assert client.get("/v1/jobs", headers=headers).json()["items"] == []
        assert client.get("/readyz").json()["checks"]["broker"] != "ok"


def test_object_store_down_is_503_and_keeps_the_job(settings, session_factory, headers, monkeypatch):
    for k, v in s3_env(f"http://127.0.0.1:{closed_port()}").items():
        monkeypatch.setenv(k, v)
    from shared.config import Settings

    down = Settings(**{**settings.model_dump(), "storage": "s3",
                       "s3_endpoint_url": f"http://127.0.0.1:{closed_port()}"})
    with TestClient(create_app(down, dispatcher=RecordingDispatcher(), session_factory=session_factory)) as client:
        jid = client.post("/v1/jobs", json=SPEC, headers=headers).json()["id"]
        with UnitOfWork(session_factory) as uow:
            uow.session.execute(Job.__table__.update().where(Job.id == jid).values(status="failed"))
        r = client.delete(f"/v1/jobs/{jid}", headers=headers)
        assert r.status_code == 503 and r.json()["detail"].startswith("storage unavailable")
        assert client.get(f"/v1/jobs/{jid}", headers=headers).status_code == 200  # rows kept: delete can be repeated
        assert client.get("/readyz").json()["checks"]["storage"] != "ok"
