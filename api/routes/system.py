"""Health, readiness, metrics, models, and the local store's signed downloads."""
from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request

from api.deps import Res, Tenant
from shared.db.session import DB_UNAVAILABLE, describe_db_error
from shared.errors import ServiceUnavailable
from shared.jobs import usecases as jobs
from shared.jobs.views import ModelList
from shared.metrics import repository as metrics_repo
from shared.storage.objects import LocalStore

router = APIRouter()


@router.get("/healthz", tags=["system"])
def healthz() -> dict:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["system"], responses={503: {"description": "a dependency is unreachable"}})
def readyz(res: Res) -> JSONResponse:
    """Database, broker and object store reachable."""
    checks: dict[str, str] = {}
    try:
        with res.session_factory() as session:
            metrics_repo.ping(session)
        checks["database"] = "ok"
    except DB_UNAVAILABLE as err:
        checks["database"] = describe_db_error(err)
    for name, probe in (("broker", res.dispatcher.ping), ("storage", res.store.check)):
        try:
            probe()
            checks[name] = "ok"
        except ServiceUnavailable as err:
            checks[name] = err.message
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", tags=["system"], include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelList, tags=["models"], responses={401: {"description": "missing API key"}})
def list_models(_tenant: Tenant, res: Res) -> ModelList:
    return jobs.list_models(res.settings)


@router.get("/v1/files/{key:path}", include_in_schema=False)
def local_file(res: Res, key: str, expires: int = Query(...), sig: str = Query(..., max_length=128),
               name: str | None = Query(default=None, max_length=200)) -> Response:
    """Downloads of the local store (embedded mode), authorised by the link's signature."""
    store = res.store
    if not isinstance(store, LocalStore) or not store.verify(key, expires, sig):
        return JSONResponse({"detail": "link invalid or expired"}, status_code=403)
    path = store.path_of(key)
    if not path.is_file():
        return JSONResponse({"detail": "not found"}, status_code=404)
    return FileResponse(path, filename=name)
