"""The scheduler tick as the workers run it (Celery beat task, embedded loop)."""
from __future__ import annotations

import logging

from shared.db.models import utcnow
from shared.schedules.usecases import tick
from worker.service.context import WorkerContext

log = logging.getLogger(__name__)


def run_tick(ctx: WorkerContext) -> int:
    """Fire the due schedules now; returns how many jobs were submitted."""
    firings = tick(ctx.uow, ctx.dispatcher, ctx.settings, now=utcnow())
    for f in firings:
        extra = {"schedule_id": str(f.schedule_id), "scheduled_for": f.scheduled_for.isoformat(),
                 "job_id": str(f.job_id) if f.job_id else None}
        if f.outcome == "error":
            log.warning("schedule firing not submitted: %s", f.error, extra=extra)
        else:
            log.info("schedule firing %s", f.outcome, extra=extra)
    return sum(1 for f in firings if f.outcome == "submitted")
