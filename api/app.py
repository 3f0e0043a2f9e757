"""The FastAPI app factory: `uvicorn --factory api.app:create_app` (or `dsgen api`).

Resources (database engine, object store, Celery publisher) are built in the lifespan,
from the settings, unless a caller (tests, embedded mode) passes its own.
"""
from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.deps import Resources
from api.errors import error_body, install_error_handlers
from api.metrics import ApiMetrics
from shared.config import Settings
from shared.dispatch import Dispatcher
from shared.storage import ObjectStore


def make_celery_publisher(settings: Settings) -> Any:
    """A small Celery app used only to publish tasks by name (the worker code is not imported)."""
    from celery import Celery

    from shared.celery_conf import celery_config

    app = Celery("dsgen-api", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def build_resources(settings: Settings, *, dispatcher: Dispatcher | None = None, store: ObjectStore | None = None,
                    session_factory: Callable[[], Any] | None = None) -> Resources:
    from shared.db.session import make_engine, make_session_factory
    from shared.dispatch import CeleryDispatcher
    from shared.storage import make_store

    closers: list[Callable[[], None]] = []
    if session_factory is None:
        engine = make_engine(settings)
        session_factory = make_session_factory(engine)
        closers.append(engine.dispose)
    if dispatcher is None:
        publisher = make_celery_publisher(settings)
        dispatcher = CeleryDispatcher(publisher)
        closers.append(publisher.close)
    from api.deps import KeyCache
    from shared.db.session import make_read_session_factory

    return Resources(settings=settings, session_factory=session_factory, store=store or make_store(settings),
                     dispatcher=dispatcher, closers=closers, keys=KeyCache(settings.api_key_cache_s),
                     read_session_factory=make_read_session_factory(session_factory))


def create_app(settings: Settings | None = None, *, dispatcher: Dispatcher | None = None,
               store: ObjectStore | None = None, session_factory: Callable[[], Any] | None = None,
               on_startup: Callable[[Resources], None] | None = None,
               on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        res = build_resources(settings, dispatcher=dispatcher, store=store, session_factory=session_factory)
        app.state.resources = res
        if on_startup is not None:
            on_startup(res)
        try:
            yield
        finally:
            if on_shutdown is not None:
                on_shutdown()
            for close in res.closers:
                close()

    app = FastAPI(
        title="dsgen",
        version="1",
        description="Dataset generation jobs: images, masks and boxes from text-to-image diffusion models.",
        lifespan=lifespan,
    )
    app.state.metrics = ApiMetrics(app.state)
    app.state.settings = settings
    install_error_handlers(app)

    @app.middleware("http")
    async def limits_and_metrics(request: Request, call_next):  # noqa: ANN001, ANN202
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_request_bytes):
            return JSONResponse(error_body(f"body larger than {settings.max_request_bytes} bytes", "body"),
                                status_code=413)
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        m = request.app.state.metrics
        m.requests.labels(request.method, route, str(response.status_code)).inc()
        m.latency.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    from fastapi.staticfiles import StaticFiles

    from api.routes import dashboard, datasets, jobs, schedules, system

    app.include_router(system.router)
    app.include_router(jobs.router)
    app.include_router(schedules.router)
    app.include_router(datasets.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC), name="static")
    from api.limiter import ConcurrencyLimit

    # Outermost: a refused request costs no routing, no auth and no database.
    app.add_middleware(ConcurrencyLimit, max_in_flight=settings.api_max_in_flight,
                       retry_after_s=settings.api_retry_after_s,
                       on_refuse=lambda: app.state.metrics.unavailable.labels("capacity").inc())
    return app
