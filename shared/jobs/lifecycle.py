"""Job and shard state machine, shared by the API (submit, cancel, retry) and the workers
(claim, heartbeat, finish) and the reconciler.

Every transition is a compare-and-set, so a task delivered twice, a worker that was given up
on, or a reconciler racing a worker never moves a job or shard backwards. Transactions that
touch a job and its shards lock the job row first (always the same order: no deadlocks);
that lock also makes "is this the last shard?" exact.
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from shared.db.models import (
    CANCELLED,
    CANCELLING,
    FAILED,
    FINALIZING,
    JOB_TERMINAL,
    QUEUED,
    RUNNING,
    S_CANCELLED,
    S_FAILED,
    S_PENDING,
    S_QUEUED,
    S_RUNNING,
    S_SUCCEEDED,
    SHARD_TERMINAL,
    SUCCEEDED,
    Job,
    Shard,
    utcnow,
)
from shared.db.session import UnitOfWork
from shared.dispatch.dispatcher import Dispatcher
from shared.jobs import repository as jobs_repo


def send_shards_after_commit(uow: UnitOfWork, dispatcher: Dispatcher, job_id: uuid.UUID, indexes: list[int],
                             *, mark: bool = True) -> None:
    """Mark shards as sent (unless they were written as queued: `mark=False`) and send them
    once the transaction commits."""
    if not indexes:
        return
    if mark:
        now = utcnow()
        jobs_repo.update_shards(uow.session, job_id, [Shard.index.in_(indexes), Shard.status.in_((S_PENDING, S_QUEUED))],
                           {"status": S_QUEUED, "enqueued_at": now})

    def send() -> None:
        for i in indexes:
            dispatcher.send_shard(job_id, i)

    uow.after_commit(send)


def settle(uow: UnitOfWork, dispatcher: Dispatcher, job: Job) -> str:
    """Move a (locked) job forward from its shards' states. Returns the job's status.

    All shards terminal: cancelled if a cancel was asked, failed if any shard failed, else
    finalizing (and the finalize task is sent after the commit).
    """
    if job.status in JOB_TERMINAL or job.status == FINALIZING:
        return job.status
    counts = jobs_repo.shard_status_counts(uow.session, job.id)
    now = utcnow()
    open_ = sum(n for s, n in counts.items() if s not in SHARD_TERMINAL)
    if open_:
        started = counts.get(S_RUNNING, 0) + counts.get(S_SUCCEEDED, 0) + counts.get(S_FAILED, 0)
        if job.status == QUEUED and started:
            job.status, job.started_at = RUNNING, job.started_at or now
        return job.status
    if job.cancel_requested:
        job.status, job.finished_at = CANCELLED, now
    elif counts.get(S_FAILED, 0) or counts.get(S_CANCELLED, 0):
        failed = [s for s in jobs_repo.list_shards(uow.session, job.id) if s.status in (S_FAILED, S_CANCELLED)]
        first = next((s.error for s in failed if s.error), "")
        job.status, job.finished_at = FAILED, now
        job.error = f"{len(failed)} of {job.num_shards} shard(s) failed" + (f"; first error: {first}" if first else "")
    else:
        job.status, job.started_at = FINALIZING, job.started_at or now
        job.finalize_heartbeat_at = now
        job.finalize_attempts = (job.finalize_attempts or 0) + 1
        job_id = job.id
        uow.after_commit(lambda: dispatcher.send_finalize(job_id))
    uow.session.flush()
    return job.status


def settle_by_id(uow: UnitOfWork, dispatcher: Dispatcher, job_id: uuid.UUID) -> str | None:
    job = jobs_repo.get_job(uow.session, job_id, lock=True)
    return settle(uow, dispatcher, job) if job else None


@dataclass(frozen=True)
class Claim:
    job_id: uuid.UUID
    shard_index: int
    attempt: int
    start: int
    stop: int
    shard_size: int
    spec: dict


def claim_shard(
    uow: UnitOfWork,
    dispatcher: Dispatcher,
    job_id: uuid.UUID,
    index: int,
    *,
    worker: str,
    max_attempts: int,
    stale_before: dt.datetime,
) -> Claim | str:
    """Take a shard for this worker (CAS), or say why not: 'missing', 'done', 'busy',
    'cancelled' or 'gave-up' (attempt cap reached: the shard is failed)."""
    s = uow.session
    job = jobs_repo.get_job(s, job_id, lock=True)
    if job is None:
        return "missing"
    shard = jobs_repo.get_shard(s, job_id, index)
    if shard is None:
        return "missing"
    if shard.status in SHARD_TERMINAL:
        return "done"
    runnable = [Shard.status.in_((S_PENDING, S_QUEUED))]
    stale = [Shard.status == S_RUNNING, (Shard.heartbeat_at.is_(None)) | (Shard.heartbeat_at < stale_before)]
    now = utcnow()
    if job.cancel_requested:
        if jobs_repo.update_shard(s, job_id, index, runnable, {"status": S_CANCELLED, "finished_at": now}) or \
                jobs_repo.update_shard(s, job_id, index, stale, {"status": S_CANCELLED, "finished_at": now}):
            settle(uow, dispatcher, job)
            return "cancelled"
        return "busy"
    if shard.status == S_RUNNING and shard.heartbeat_at is not None and shard.heartbeat_at >= stale_before:
        return "busy"  # a duplicate delivery while the first one still runs
    if shard.attempts >= max_attempts:
        if jobs_repo.update_shard(s, job_id, index, [Shard.status.in_((S_PENDING, S_QUEUED, S_RUNNING))],
                             {"status": S_FAILED, "finished_at": now,
                              "error": shard.error or f"gave up after {shard.attempts} attempts (worker lost each time)"}):
            settle(uow, dispatcher, job)
        return "gave-up"
    values = {"status": S_RUNNING, "attempts": Shard.attempts + 1, "worker": worker,
              "heartbeat_at": now, "started_at": now, "finished_at": None}
    if not (jobs_repo.update_shard(s, job_id, index, runnable, values) or jobs_repo.update_shard(s, job_id, index, stale, values)):
        return "busy"
    s.refresh(shard)
    if job.status == QUEUED:
        job.status, job.started_at = RUNNING, job.started_at or now
    return Claim(job_id, index, shard.attempts, shard.start, shard.stop, job.shard_size, dict(job.spec))


def heartbeat(session: Session, claim: Claim) -> tuple[bool, bool]:
    """Refresh the heartbeat; returns (still ours, cancel requested)."""
    ours = jobs_repo.update_shard(session, claim.job_id, claim.shard_index,
                             [Shard.status == S_RUNNING, Shard.attempts == claim.attempt],
                             {"heartbeat_at": utcnow()})
    job = jobs_repo.get_job(session, claim.job_id)
    return ours, bool(job is None or job.cancel_requested)


def finish_shard(uow: UnitOfWork, dispatcher: Dispatcher, claim: Claim, status: str, error: str | None = None) -> bool:
    """running -> succeeded/cancelled/failed for this attempt only, then settle the job."""
    job = jobs_repo.get_job(uow.session, claim.job_id, lock=True)
    if job is None:
        return False
    ok = jobs_repo.update_shard(uow.session, claim.job_id, claim.shard_index,
                           [Shard.status == S_RUNNING, Shard.attempts == claim.attempt],
                           {"status": status, "finished_at": utcnow(), "heartbeat_at": utcnow(), "error": error})
    if ok:
        settle(uow, dispatcher, job)
    return ok


def release_claim(uow: UnitOfWork, claim: Claim, error: str) -> bool:
    """Give a claimed shard back unspent (a backing server went away under it): queued again,
    the attempt not counted, so the retried task claims it at once."""
    return jobs_repo.update_shard(uow.session, claim.job_id, claim.shard_index,
                             [Shard.status == S_RUNNING, Shard.attempts == claim.attempt],
                             {"status": S_QUEUED, "attempts": Shard.attempts - 1, "enqueued_at": utcnow(),
                              "heartbeat_at": None, "worker": None, "error": error})


def attempt_is_current(session: Session, claim: Claim) -> bool:
    """Is this attempt still the shard's owner? Locks the shard row until the transaction ends,
    so a new claim cannot take the shard between this check and the caller's writes."""
    return jobs_repo.lock_running_shard(session, claim.job_id, claim.shard_index, claim.attempt)


def shard_error(uow: UnitOfWork, dispatcher: Dispatcher, claim: Claim, error: str, max_attempts: int) -> str:
    """An attempt raised: send the shard again while attempts remain, else fail it."""
    if claim.attempt >= max_attempts:
        return "failed" if finish_shard(uow, dispatcher, claim, S_FAILED, error) else "lost"
    job = jobs_repo.get_job(uow.session, claim.job_id, lock=True)
    if job is None:
        return "lost"
    ok = jobs_repo.update_shard(uow.session, claim.job_id, claim.shard_index,
                           [Shard.status == S_RUNNING, Shard.attempts == claim.attempt],
                           {"status": S_QUEUED, "enqueued_at": utcnow(), "error": error})
    if ok:
        uow.after_commit(lambda: dispatcher.send_shard(claim.job_id, claim.shard_index))
        return "requeued"
    return "lost"


def request_cancel(uow: UnitOfWork, dispatcher: Dispatcher, job: Job) -> str:
    """Flag the job (workers stop between batches), cancel shards nobody runs yet."""
    if job.status in JOB_TERMINAL or job.status in (FINALIZING, CANCELLING):
        return job.status
    job.cancel_requested = True
    job.status = CANCELLING
    jobs_repo.update_shards(uow.session, job.id, [Shard.status.in_((S_PENDING, S_QUEUED))],
                       {"status": S_CANCELLED, "finished_at": utcnow()})
    uow.session.flush()
    return settle(uow, dispatcher, job)


def retry_failed(uow: UnitOfWork, dispatcher: Dispatcher, job: Job) -> list[int]:
    """Reset the failed shards of a failed job and send them again; other shards are kept.
    (A job whose shards all succeeded but whose finalisation failed is finalised again.)"""
    indexes = jobs_repo.update_shards(
        uow.session, job.id, [Shard.status == S_FAILED],
        {"status": S_PENDING, "attempts": 0, "error": None, "worker": None, "heartbeat_at": None,
         "finished_at": None, "started_at": None},
    )
    job.status, job.error, job.finished_at, job.cancel_requested = QUEUED, None, None, False
    job.finalize_attempts = 0  # a job that failed in finalisation gets a fresh one
    uow.session.flush()
    send_shards_after_commit(uow, dispatcher, job.id, indexes)
    settle(uow, dispatcher, job)
    return indexes


def finish_job(uow: UnitOfWork, job_id: uuid.UUID, ok: bool, error: str | None = None) -> bool:
    """finalizing -> succeeded | failed (CAS)."""
    values = {"status": SUCCEEDED if ok else FAILED, "finished_at": utcnow(), "error": error}
    return jobs_repo.set_job_status(uow.session, job_id, (FINALIZING,), values)
