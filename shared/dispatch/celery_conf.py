"""Celery configuration as a plain dict (no celery import here), used by the worker's app and
by the API's publisher so both sides agree on routes and broker options.

See `../shared/service.md`: acks late, prefetch 1, the visibility timeout in all three
places, separate gpu/cpu queues, time limits, no result backend (the real state is in
Postgres).
"""
from __future__ import annotations

from typing import Any

from shared.config import Settings
from shared.dispatch.tasks import CPU_QUEUE, QUEUE_OF


def celery_config(settings: Settings) -> dict[str, Any]:
    vt = settings.visibility_timeout_s
    if vt <= settings.task_time_limit_s:
        raise ValueError(
            "DSGEN_VISIBILITY_TIMEOUT_S must exceed DSGEN_TASK_TIME_LIMIT_S, or a long task is "
            "delivered a second time while it still runs"
        )
    return {
        "broker_url": settings.broker_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,  # safe: attempts are capped in Postgres
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": vt},
        "result_backend_transport_options": {"visibility_timeout": vt},
        "visibility_timeout": vt,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_default_queue": CPU_QUEUE,
        "task_routes": {name: {"queue": queue} for name, queue in QUEUE_OF.items()},
        "task_create_missing_queues": True,
        "broker_connection_timeout": settings.broker_connect_timeout_s,
        "broker_connection_retry_on_startup": True,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "broker_pool_limit": 10,
    }
