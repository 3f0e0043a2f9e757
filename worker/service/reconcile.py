"""The reconciler: Postgres is the truth, the broker only a delivery mechanism.

Run periodically (Celery beat, or a thread in embedded mode). It re-sends shards whose
worker stopped heartbeating (killed, OOM, machine lost) and shards that the broker lost
(Redis restarted or flushed: queued in Postgres but the queue is empty), re-sends stalled
finalisations, and settles jobs whose shards are all finished. Each fix is one small
compare-and-set transaction, so two reconcilers, or a reconciler and a worker, can race.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.db.models import (
    FINALIZING,
    JOB_ACTIVE,
    S_CANCELLED,
    S_FAILED,
    S_QUEUED,
    S_RUNNING,
    Shard,
    utcnow,
)
from shared.dispatch.tasks import CPU_QUEUE, GPU_QUEUE
from shared.jobs import repository as jobs_repo
from shared.jobs.lifecycle import finish_job, settle
from worker.service.context import WorkerContext


@dataclass
class ReconcileReport:
    resent_stale: list[tuple[str, int]] = field(default_factory=list)
    failed_stale: list[tuple[str, int]] = field(default_factory=list)
    resent_lost: list[tuple[str, int]] = field(default_factory=list)
    cancelled: list[tuple[str, int]] = field(default_factory=list)
    finalize_resent: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v}


def reconcile(ctx: WorkerContext, *, queue_depth: Callable[[str], int | None] | None = None,
              assume_running_dead: bool = False) -> ReconcileReport:
    s = ctx.settings
    now = utcnow()
    depth = queue_depth or ctx.dispatcher.queue_depth
    report = ReconcileReport()
    stale_before = now if assume_running_dead else now - dt.timedelta(seconds=s.heartbeat_timeout_s)

    # 1. running shards whose worker stopped heartbeating
    with ctx.uow() as uow:
        stale = [(sh.job_id, sh.index) for sh in jobs_repo.stale_running_shards(uow.session, stale_before)]
    for job_id, index in stale:
        with ctx.uow() as uow:
            job = jobs_repo.get_job(uow.session, job_id, lock=True)
            shard = jobs_repo.get_shard(uow.session, job_id, index)
            if job is None or shard is None or shard.status != S_RUNNING or (
                    shard.heartbeat_at is not None and shard.heartbeat_at >= stale_before):
                continue
            cas = [Shard.status == S_RUNNING, Shard.attempts == shard.attempts]
            if job.cancel_requested:
                if jobs_repo.update_shard(uow.session, job_id, index, cas, {"status": S_CANCELLED, "finished_at": now}):
                    report.cancelled.append((str(job_id), index))
                    settle(uow, ctx.dispatcher, job)
            elif shard.attempts >= s.max_attempts:
                err = shard.error or f"worker lost (no heartbeat) on each of {shard.attempts} attempts"
                if jobs_repo.update_shard(uow.session, job_id, index, cas, {"status": S_FAILED, "finished_at": now, "error": err}):
                    report.failed_stale.append((str(job_id), index))
                    settle(uow, ctx.dispatcher, job)
            elif jobs_repo.update_shard(uow.session, job_id, index, cas,
                                   {"status": S_QUEUED, "enqueued_at": now,
                                    "error": f"worker {shard.worker} stopped heartbeating"}):
                report.resent_stale.append((str(job_id), index))
                uow.after_commit(lambda j=job_id, i=index: ctx.dispatcher.send_shard(j, i))

    # 2. shards the broker lost: queued here, but the queue is empty (or they were never sent)
    grace = dt.timedelta(seconds=0 if assume_running_dead else s.requeue_grace_s)
    gpu_depth = depth(GPU_QUEUE)
    if gpu_depth == 0:
        queued_before = now - grace
    elif gpu_depth is None:  # cannot tell: only what is older than the visibility timeout
        queued_before = now - dt.timedelta(seconds=s.visibility_timeout_s)
    else:
        queued_before = None
    with ctx.uow() as uow:
        lost = [(sh.job_id, sh.index, sh.status, sh.enqueued_at)
                for sh in jobs_repo.unsent_shards(uow.session, now - grace, queued_before)]
    for job_id, index, status, enqueued_at in lost:
        with ctx.uow() as uow:
            job = jobs_repo.get_job(uow.session, job_id, lock=True)
            if job is None:
                continue
            cas = [Shard.status == status,
                   Shard.enqueued_at.is_(None) if enqueued_at is None else Shard.enqueued_at == enqueued_at]
            if job.cancel_requested:
                if jobs_repo.update_shard(uow.session, job_id, index, cas, {"status": S_CANCELLED, "finished_at": now}):
                    report.cancelled.append((str(job_id), index))
                    settle(uow, ctx.dispatcher, job)
            elif jobs_repo.update_shard(uow.session, job_id, index, cas, {"status": S_QUEUED, "enqueued_at": now}):
                report.resent_lost.append((str(job_id), index))
                uow.after_commit(lambda j=job_id, i=index: ctx.dispatcher.send_shard(j, i))

    # 3. finalisations with no sign of life
    cpu_depth = depth(CPU_QUEUE)
    limit = now - dt.timedelta(seconds=s.finalize_timeout_s)
    quiet = now - dt.timedelta(seconds=max(s.requeue_grace_s, 2 * s.heartbeat_interval_s))
    with ctx.uow() as uow:
        finalizing = [(j.id, j.finalize_heartbeat_at) for j in jobs_repo.jobs_in_status(uow.session, FINALIZING)]
    for job_id, beat in finalizing:
        if beat is not None and beat >= limit and not (cpu_depth == 0 and beat < quiet):
            continue
        with ctx.uow() as uow:
            job = jobs_repo.get_job(uow.session, job_id, lock=True)
            if job is None or job.status != FINALIZING or job.finalize_heartbeat_at != beat:
                continue
            if job.finalize_attempts >= s.max_attempts:
                finish_job(uow, job_id, ok=False, error=job.error or "finalize never completed")
                continue
            job.finalize_attempts += 1
            job.finalize_heartbeat_at = now
            report.finalize_resent.append(str(job_id))
            uow.after_commit(lambda j=job_id: ctx.dispatcher.send_finalize(j))

    # 4. jobs whose shards are all finished but that were not moved on
    with ctx.uow() as uow:
        open_jobs = [j.id for j in jobs_repo.active_jobs(uow.session) if j.status != FINALIZING]
    for job_id in open_jobs:
        with ctx.uow() as uow:
            job = jobs_repo.get_job(uow.session, job_id, lock=True)
            if job is None or job.status not in JOB_ACTIVE:
                continue
            before = job.status
            after = settle(uow, ctx.dispatcher, job)
            if after != before:
                report.settled.append(str(job_id))
    return report

