"""Schedule and schedule-run queries, taking a SQLAlchemy `Session`.
"""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.db.models import (
    DatasetVersion,
    Job,
    Schedule,
    ScheduleRun,
    utcnow,
)
from shared.db.upsert import dialect_insert


def get_schedule(session: Session, schedule_id: uuid.UUID, tenant_id: uuid.UUID | None = None) -> Schedule | None:
    q = select(Schedule).where(Schedule.id == schedule_id)
    if tenant_id is not None:
        q = q.where(Schedule.tenant_id == tenant_id)
    return session.scalar(q)


def get_schedule_by_name(session: Session, tenant_id: uuid.UUID, name: str) -> Schedule | None:
    return session.scalar(select(Schedule).where(Schedule.tenant_id == tenant_id, Schedule.name == name))


def list_schedules(session: Session, tenant_id: uuid.UUID) -> list[Schedule]:
    return list(session.scalars(select(Schedule).where(Schedule.tenant_id == tenant_id).order_by(Schedule.name)))


def due_schedule_ids(session: Session, now: dt.datetime) -> list[uuid.UUID]:
    return list(session.scalars(
        select(Schedule.id).where(Schedule.enabled.is_(True), Schedule.next_fire_at <= now).order_by(Schedule.next_fire_at)
    ))


def lock_due_schedule(session: Session, schedule_id: uuid.UUID, now: dt.datetime) -> Schedule | None:
    """The schedule, locked, if it is still due (a scheduler that waited on the lock sees the
    row the winner committed, no longer due, and gets None)."""
    return session.scalar(
        select(Schedule).where(Schedule.id == schedule_id, Schedule.enabled.is_(True), Schedule.next_fire_at <= now)
        .with_for_update()
    )


def insert_run(session: Session, schedule_id: uuid.UUID, scheduled_for: dt.datetime) -> bool:
    """INSERT the firing ... ON CONFLICT DO NOTHING: True only for the one that made it."""
    stmt = dialect_insert(session, ScheduleRun).values(schedule_id=schedule_id, scheduled_for=scheduled_for,
                                                job_id=None, error=None, created_at=utcnow())
    stmt = stmt.on_conflict_do_nothing(index_elements=["schedule_id", "scheduled_for"]).returning(ScheduleRun.schedule_id)
    return session.execute(stmt).first() is not None


def set_run(session: Session, schedule_id: uuid.UUID, scheduled_for: dt.datetime, **values: Any) -> None:
    session.execute(update(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id,
                                              ScheduleRun.scheduled_for == scheduled_for).values(**values))


def list_runs(session: Session, schedule_id: uuid.UUID, limit: int) -> list[tuple[ScheduleRun, Job | None, int | None]]:
    rows = session.execute(
        select(ScheduleRun, Job, DatasetVersion.version)
        .outerjoin(Job, Job.id == ScheduleRun.job_id)
        .outerjoin(DatasetVersion, DatasetVersion.job_id == ScheduleRun.job_id)
        .where(ScheduleRun.schedule_id == schedule_id)
        .order_by(ScheduleRun.scheduled_for.desc()).limit(limit)
    )
    return [(r, j, v) for r, j, v in rows]


def delete_schedule(session: Session, schedule_id: uuid.UUID) -> None:
    session.execute(delete(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id))
    session.execute(delete(Schedule).where(Schedule.id == schedule_id))
