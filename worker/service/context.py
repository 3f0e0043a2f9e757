"""What a worker process needs, built once per process (after the prefork fork)."""
from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.db.session import UnitOfWork, make_engine, make_session_factory
from shared.dispatch.dispatcher import Dispatcher
from shared.engine import Engine, EngineFactory
from shared.formats.records import SampleRecord
from shared.formats.spec import JobSpec
from shared.storage.objects import ObjectStore, make_store

Exporter = Callable[[Path, JobSpec, list[SampleRecord]], Path]


def default_engine_factory(spec: JobSpec, uploads: Callable[[str], Path] | None = None,
                           datasets: Callable[..., Path] | None = None) -> Engine:
    from worker.engine.standin import StandinEngine, is_standin

    if is_standin(spec):  # builtin:fleet-standin: no weights, no diffusion (fleet benchmarks)
        return StandinEngine(spec)
    from worker.engine.session import EngineSession  # torch: only in the process that generates

    return EngineSession(spec, uploads=uploads, datasets=datasets)


def default_exporter(root: Path, spec: JobSpec, records: list[SampleRecord]) -> Path:
    from shared.formats.export import write_exports

    return write_exports(root, spec, records)


@dataclass
class WorkerContext:
    settings: Settings
    session_factory: Callable[[], Any]
    store: ObjectStore
    dispatcher: Dispatcher
    engine_factory: EngineFactory = default_engine_factory
    exporter: Exporter = default_exporter
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.session_factory)

    def uploads(self) -> Callable[[str], Path]:
        """Fetches an upload id's extracted folder (downloaded from the object store once)."""
        if getattr(self, "_uploads", None) is None:
            from shared.sources.archives import Limits
            from worker.service.sources import UploadCache

            self._uploads = UploadCache(self.store, self.settings.source_cache_dir, Limits.from_settings(self.settings))
        return self._uploads.fetch

    def datasets(self, tenant_id) -> Callable[..., Path]:
        """Fetches (dataset name, version) of this tenant as a local dsgen folder: resolved to its
        job in the database (only this tenant's datasets), materialised from the object store once."""
        if getattr(self, "_datasets", None) is None:
            from worker.service.sources import DatasetCache

            self._datasets = DatasetCache(self.store, self.settings.source_cache_dir, self.settings.upload_concurrency)

        def fetch(name: str, version: int | None, field: str = "source.dataset") -> Path:
            from shared.datasets.versions import source_job
            from shared.formats.spec import SpecError

            with self.uow() as uow:
                job = source_job(uow, tenant_id, name, version)
                found = None if job is None else (job.id, job.shard_size, job.num_images, dict(job.spec))
            if found is None:
                what = "its latest version" if version is None else f"version v{version}"
                raise SpecError(f"{field}: dataset {name!r} has no {what} for this tenant (was it deleted?)", field=field)
            return self._datasets.fetch(*found, field=field)

        return fetch


def build_context(settings: Settings, dispatcher: Dispatcher, **overrides: Any) -> WorkerContext:
    engine = make_engine(settings)
    return WorkerContext(settings=settings, session_factory=make_session_factory(engine),
                         store=make_store(settings), dispatcher=dispatcher, **overrides)


class Ticker:
    """Calls `fn` every `interval` seconds in a daemon thread until stopped."""

    def __init__(self, interval: float, fn: Callable[[], None]):
        self._interval = interval
        self._fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="dsgen-heartbeat")

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._fn()
            except Exception:  # noqa: BLE001 - a missed heartbeat is not fatal
                pass

    def __enter__(self) -> "Ticker":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
