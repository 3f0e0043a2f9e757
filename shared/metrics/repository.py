"""Service-wide counts for `/metrics` and the readiness ping, taking a SQLAlchemy `Session`.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from shared.db.models import (
    Job,
    Sample,
    Shard,
)


def job_status_counts(session: Session) -> dict[str, int]:
    return {s: n for s, n in session.execute(select(Job.status, func.count()).group_by(Job.status))}


def count_all_samples(session: Session, since: dt.datetime | None = None) -> int:
    q = select(func.count()).select_from(Sample)
    if since is not None:
        q = q.where(Sample.created_at >= since)
    return session.scalar(q) or 0


def shard_duration_buckets(session: Session, bounds: Sequence[float]) -> tuple[list[int], int, float]:
    """Finished (succeeded) shards: cumulative counts per upper bound (seconds), count, sum."""
    rows = session.execute(
        select(Shard.started_at, Shard.finished_at).where(Shard.status == "succeeded", Shard.started_at.is_not(None),
                                                          Shard.finished_at.is_not(None))
    )
    durations = [max(0.0, (f - s).total_seconds()) for s, f in rows]
    cumulative = [sum(1 for d in durations if d <= b) for b in bounds]
    return cumulative, len(durations), float(sum(durations))


def shard_retries(session: Session) -> int:
    """Attempts beyond the first, over every shard."""
    return session.scalar(select(func.coalesce(func.sum(Shard.attempts - 1), 0)).where(Shard.attempts > 1)) or 0


def ping(session: Session) -> None:
    """One round trip to the database (raises when it is unreachable)."""
    session.execute(text("SELECT 1"))
