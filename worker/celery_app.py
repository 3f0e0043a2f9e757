"""The Celery app, built by a factory from the settings (`DSGEN_*`).

`celery -A worker.celery_app worker -Q gpu -c 1` (or `dsgen worker --queues gpu`) finds `app`.
Building the app connects to nothing, and nothing heavy is imported here: the model is
loaded lazily in the prefork child on its first shard, never in the parent.
"""
from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared.config import Settings
from shared.dispatch.celery_conf import celery_config
from shared.dispatch.tasks import CPU_QUEUE, GPU_QUEUE, RECONCILE_TASK, SCHEDULE_TICK_TASK


def create_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    app = Celery("dsgen", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.task_queues = (Queue(GPU_QUEUE, routing_key=GPU_QUEUE), Queue(CPU_QUEUE, routing_key=CPU_QUEUE))
    app.conf.beat_schedule = {
        "reconcile": {
            "task": RECONCILE_TASK,
            "schedule": settings.reconcile_interval_s,
            "options": {"queue": CPU_QUEUE, "expires": settings.reconcile_interval_s * 2},
        },
        # dataset schedules; a duplicated tick (or a second beat) fires nothing twice
        "schedules": {
            "task": SCHEDULE_TICK_TASK,
            "schedule": settings.schedule_tick_s,
            "options": {"queue": CPU_QUEUE, "expires": settings.schedule_tick_s * 2},
        },
    }
    app.dsgen_settings = settings  # type: ignore[attr-defined]
    from worker.tasks import register_tasks

    register_tasks(app)
    return app


app = create_celery_app()
