"""Thin Celery tasks: ids in, one domain call, a short string out.

The per-process context (database engine, object store, dispatcher) is built on the first
task a process runs, i.e. in the prefork child, never at import time or in the parent.
"""
from __future__ import annotations

import logging
import uuid

from celery import Celery

from shared.dispatch.dispatcher import CeleryDispatcher
from shared.dispatch.tasks import FINALIZE_TASK, RECONCILE_TASK, SCHEDULE_TICK_TASK, SHARD_TASK
from shared.errors import ServiceUnavailable
from worker.service.context import WorkerContext, build_context

log = logging.getLogger(__name__)
_contexts: dict[int, WorkerContext] = {}


def context_for(app: Celery) -> WorkerContext:
    ctx = _contexts.get(id(app))
    if ctx is None:
        ctx = _contexts[id(app)] = build_context(app.dsgen_settings, CeleryDispatcher(app))
    return ctx


# A backing server down (Postgres restarting, S3 throttling): retry the message with backoff
# (2, 4, 8, ... s, at most 60 s, jittered) rather than acknowledge a failed task, which would
# drain the queue while the database is away. Short countdowns only (see docs/service.md).
RETRY_UNAVAILABLE = dict(autoretry_for=(ServiceUnavailable,), retry_backoff=2, retry_backoff_max=60,
                         retry_jitter=True, max_retries=60)


def register_tasks(app: Celery) -> None:
    @app.task(name=SHARD_TASK, acks_late=True, ignore_result=True, **RETRY_UNAVAILABLE)
    def run_shard_task(job_id: str, shard_index: int) -> str:
        from shared.logs import log_context
        from worker.service.shards import run_shard

        with log_context(job_id=job_id, shard=int(shard_index)):
            return run_shard(context_for(app), uuid.UUID(job_id), int(shard_index))

    @app.task(name=FINALIZE_TASK, acks_late=True, ignore_result=True, **RETRY_UNAVAILABLE)
    def finalize_task(job_id: str) -> str:
        from shared.logs import log_context
        from worker.service.finalize import finalize_job

        with log_context(job_id=job_id):
            return finalize_job(context_for(app), uuid.UUID(job_id))

    @app.task(name=RECONCILE_TASK, ignore_result=True)
    def reconcile_task() -> dict:
        from worker.service.reconcile import reconcile

        report = reconcile(context_for(app)).as_dict()
        if report:
            log.warning("reconciler: %s", report)
        return report

    @app.task(name=SCHEDULE_TICK_TASK, ignore_result=True)
    def schedule_tick_task() -> int:
        from worker.service.scheduling import run_tick

        return run_tick(context_for(app))
