"""The FastAPI app factory: `uvicorn --factory api.app:create_app` (or `dsgen api`).

Resources (database engine, object store, Celery publisher) are built in the lifespan,
from the settings, unless a caller (tests, embedded mode) passes its own.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI

from api.body_limit import BodyLimit
from api.deps import Resources
from api.errors import install_error_handlers
from api.metrics import ApiMetrics
from shared.config import Settings
from shared.dispatch.dispatcher import Dispatcher
from shared.storage.objects import ObjectStore


def make_celery_publisher(settings: Settings) -> Any:
    """A small Celery app used only to publish tasks by name (the worker code is not imported)."""
    from celery import Celery

    from shared.dispatch.celery_conf import celery_config

    app = Celery("dsgen-api", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def build_resources(settings: Settings, *, dispatcher: Dispatcher | None = None, store: ObjectStore | None = None,
                    session_factory: Callable[[], Any] | None = None) -> Resources:
    from shared.db.session import make_engine, make_session_factory
    from shared.dispatch.dispatcher import CeleryDispatcher
    from shared.storage.objects import make_store

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
    from api.status_cache import StatusCache
    from shared.db.session import make_read_session_factory

    return Resources(settings=settings, session_factory=session_factory, store=store or make_store(settings),
                     dispatcher=dispatcher, closers=closers, keys=KeyCache(settings.api_key_cache_s),
                     status=StatusCache(settings.api_status_cache_s),
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
        docs_url=None,  # served below from local assets
        redoc_url=None,  # ReDoc only exists on a CDN: /docs is the documentation
    )
    app.state.metrics = ApiMetrics(app.state)
    app.state.settings = settings
    install_error_handlers(app)

    from api.metrics import RequestMetrics

    app.add_middleware(RequestMetrics, metrics=lambda: app.state.metrics)

    # Outermost: a body over the limit is refused before anything else reads it.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes,
                       overrides={"/v1/sources": settings.max_source_bytes})

    from fastapi.staticfiles import StaticFiles

    from api.routes import dashboard, datasets, jobs, schedules, sources, system

    app.include_router(system.router)
    app.include_router(jobs.router)
    app.include_router(schedules.router)
    app.include_router(datasets.router)
    app.include_router(sources.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC), name="static")
    install_docs(app)
    from api.limiter import ConcurrencyLimit

    # Outermost: a refused request costs no routing, no auth and no database.
    app.add_middleware(ConcurrencyLimit, max_in_flight=settings.api_max_in_flight,
                       retry_after_s=settings.api_retry_after_s,
                       on_refuse=lambda: app.state.metrics.unavailable.labels("capacity").inc())
    return app


def install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs with its script and styles from the `swagger-ui-bundle` package,
    not a CDN, so the docs work on a machine without internet (embedded mode)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # pragma: no cover - the api extra installs it
        swagger_ui_path = None
    if swagger_ui_path is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    assets = {"swagger_js_url": "/docs-assets/swagger-ui-bundle.js", "swagger_css_url": "/docs-assets/swagger-ui.css",
              "swagger_favicon_url": "/docs-assets/favicon-32x32.png"} if swagger_ui_path else {}

    @app.get("/docs", include_in_schema=False)
    def docs():  # noqa: ANN202
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API", **assets)
