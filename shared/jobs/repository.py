"""Job, shard, sample and export queries, one function per question, taking a SQLAlchemy `Session`.

State changes are compare-and-set: an UPDATE whose WHERE names the state it expects, with the
row count telling whether it won. Sample and annotation writes are upserts keyed by
(job, index), one statement per batch.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, literal, or_, select, text, tuple_, update
from sqlalchemy.orm import Session

from shared.db.models import (
    JOB_ACTIVE,
    S_PENDING,
    S_QUEUED,
    S_RUNNING,
    AnnotationRow,
    DatasetVersion,
    Export,
    Job,
    Sample,
    ScheduleRun,
    Shard,
)
from shared.db.upsert import dialect_insert, upsert


def get_job(session: Session, job_id: uuid.UUID, tenant_id: uuid.UUID | None = None, *, lock: bool = False) -> Job | None:
    q = select(Job).where(Job.id == job_id)
    if tenant_id is not None:
        q = q.where(Job.tenant_id == tenant_id)
    if lock:
        q = q.with_for_update(key_share=True)
    return session.scalar(q)


def find_job_by_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def count_active_jobs(session: Session, tenant_id: uuid.UUID) -> int:
    return session.scalar(
        select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status.in_(JOB_ACTIVE))
    ) or 0


def list_jobs(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    status: str | None,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Job]:
    """Newest first; `after` is the (created_at, id) of the last job of the previous page."""
    q = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        q = q.where(Job.status == status)
    if after is not None:
        created, jid = after
        q = q.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < jid)))
    return list(session.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)))


def active_jobs(session: Session) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.status.in_(JOB_ACTIVE))))


def jobs_in_status(session: Session, status: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.status == status)))


def set_job_status(session: Session, job_id: uuid.UUID, expected: Iterable[str], values: dict) -> bool:
    res = session.execute(update(Job).where(Job.id == job_id, Job.status.in_(list(expected))).values(**values))
    return res.rowcount == 1


def delete_job(session: Session, job_id: uuid.UUID) -> None:
    # Children first (explicitly, so SQLite without cascades behaves like Postgres).
    session.execute(delete(AnnotationRow).where(AnnotationRow.job_id == job_id))
    session.execute(delete(Sample).where(Sample.job_id == job_id))
    session.execute(delete(Shard).where(Shard.job_id == job_id))
    session.execute(delete(Export).where(Export.job_id == job_id))
    session.execute(delete(DatasetVersion).where(DatasetVersion.job_id == job_id))
    session.execute(update(ScheduleRun).where(ScheduleRun.job_id == job_id).values(job_id=None))
    session.execute(delete(Job).where(Job.id == job_id))


def get_shard(session: Session, job_id: uuid.UUID, index: int) -> Shard | None:
    return session.get(Shard, (job_id, index))


def list_shards(session: Session, job_id: uuid.UUID) -> list[Shard]:
    return list(session.scalars(select(Shard).where(Shard.job_id == job_id).order_by(Shard.index)))


def shard_progress_rows(session: Session, job_id: uuid.UUID) -> list:
    """A job's shards as plain rows (index, start, stop, status, attempts, done, worker, error)
    for the status view: a poll reads them and builds no ORM instance (64 `Shard` objects
    cost about 2 ms of CPU a poll, most of a status request)."""
    cols = (Shard.index, Shard.start, Shard.stop, Shard.status, Shard.attempts, Shard.done, Shard.worker, Shard.error)
    return list(session.execute(select(*cols).where(Shard.job_id == job_id).order_by(Shard.index)))


_JOB_STATUS_STAMP = text("""
    SELECT j.xmin::text,
           (SELECT coalesce(sum(s.xmin::text::bigint), 0) || ':' || count(*) || ':' || coalesce(sum(s.done), 0)
              FROM shards s WHERE s.job_id = j.id),
           (SELECT v.xmin::text FROM dataset_versions v WHERE v.job_id = j.id)
      FROM jobs j WHERE j.id = :job AND j.tenant_id = :tenant""")


def job_status_stamp(session: Session, job_id: uuid.UUID, tenant_id: uuid.UUID) -> str | None:
    """A token that changes whenever anything a job's status view shows can have changed: the
    ids of the transactions that last wrote the job row, its shards and its dataset version
    (Postgres' `xmin`: every UPDATE writes a new row version) and the shards' summed progress.
    One round trip, one row back. None when the job is not this tenant's, or on a database
    without `xmin` (SQLite): then there is no token and the view is always read."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    row = session.execute(_JOB_STATUS_STAMP, {"job": job_id, "tenant": tenant_id}).first()
    return None if row is None else "/".join(str(v) for v in row)


def shard_status_counts(session: Session, job_id: uuid.UUID) -> dict[str, int]:
    rows = session.execute(
        select(Shard.status, func.count()).where(Shard.job_id == job_id).group_by(Shard.status)
    )
    return {status: n for status, n in rows}


def insert_shards(session: Session, job_id: uuid.UUID, num_images: int, shard_size: int, status: str,
                  enqueued_at: dt.datetime | None) -> int:
    """All shards of a new job in one INSERT ... SELECT over a generated series (the database
    makes the rows: nothing per shard crosses the wire). Returns the number of shards."""
    count = -(-num_images // shard_size)
    if count <= 0:
        return 0
    series = select(literal(0).label("i")).cte("series", recursive=True)
    series = series.union_all(select(series.c.i + 1).where(series.c.i + 1 < count))
    start = series.c.i * shard_size
    stop = case((start + shard_size > num_images, literal(num_images)), else_=start + shard_size)
    rows = select(literal(job_id, Shard.job_id.type), series.c.i, start, stop, literal(status, Shard.status.type),
                  literal(0), literal(enqueued_at, Shard.enqueued_at.type))
    session.execute(insert(Shard).from_select(
        ["job_id", "index", "start", "stop", "status", "attempts", "enqueued_at"], rows))
    return count


def lock_running_shard(session: Session, job_id: uuid.UUID, index: int, attempt: int) -> bool:
    """True (and the row locked FOR UPDATE) when the shard is running with this attempt."""
    found = session.scalar(
        select(Shard.index).where(Shard.job_id == job_id, Shard.index == index, Shard.status == S_RUNNING,
                                  Shard.attempts == attempt).with_for_update())
    return found is not None


def update_shard(session: Session, job_id: uuid.UUID, index: int, where: Sequence[Any], values: dict) -> bool:
    """Compare-and-set on one shard: True when the row matched `where` and was changed."""
    res = session.execute(
        update(Shard).where(Shard.job_id == job_id, Shard.index == index, *where).values(**values)
    )
    return res.rowcount == 1


def update_shards(session: Session, job_id: uuid.UUID, where: Sequence[Any], values: dict) -> list[int]:
    res = session.execute(
        update(Shard).where(Shard.job_id == job_id, *where).values(**values).returning(Shard.index)
    )
    return sorted(r[0] for r in res)


def stale_running_shards(session: Session, before: dt.datetime) -> list[Shard]:
    return list(session.scalars(
        select(Shard).where(Shard.status == S_RUNNING, or_(Shard.heartbeat_at.is_(None), Shard.heartbeat_at < before))
    ))


def unsent_shards(session: Session, pending_before: dt.datetime, queued_before: dt.datetime | None) -> list[Shard]:
    """Pending shards older than `pending_before`; queued ones sent before `queued_before`."""
    cond = and_(Shard.status == S_PENDING, or_(Shard.enqueued_at.is_(None), Shard.enqueued_at < pending_before))
    if queued_before is not None:
        cond = or_(cond, and_(Shard.status == S_QUEUED, Shard.enqueued_at < queued_before))
    return list(session.scalars(select(Shard).where(cond).order_by(Shard.job_id, Shard.index)))


def existing_sample_indexes(session: Session, job_id: uuid.UUID, start: int, stop: int) -> set[int]:
    return set(session.scalars(
        select(Sample.index).where(Sample.job_id == job_id, Sample.index >= start, Sample.index < stop)
    ))


def count_samples(session: Session, job_id: uuid.UUID) -> int:
    return session.scalar(select(func.count()).select_from(Sample).where(Sample.job_id == job_id)) or 0


def samples_per_shard(session: Session, job_id: uuid.UUID) -> dict[int, int]:
    rows = session.execute(
        select(Sample.shard_index, func.count()).where(Sample.job_id == job_id).group_by(Sample.shard_index)
    )
    return {i: n for i, n in rows}


def list_samples(session: Session, job_id: uuid.UUID, *, after: int | None = None, limit: int | None = None) -> list[Sample]:
    q = select(Sample).where(Sample.job_id == job_id)
    if after is not None:
        q = q.where(Sample.index > after)
    q = q.order_by(Sample.index)
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))


def annotations_for(session: Session, job_id: uuid.UUID, indexes: Sequence[int]) -> dict[int, list[AnnotationRow]]:
    out: dict[int, list[AnnotationRow]] = {i: [] for i in indexes}
    if not indexes:
        return out
    rows = session.scalars(
        select(AnnotationRow).where(AnnotationRow.job_id == job_id, AnnotationRow.sample_index.in_(list(indexes)))
        .order_by(AnnotationRow.sample_index, AnnotationRow.instance_id)
    )
    for r in rows:
        out[r.sample_index].append(r)
    return out


def upsert_samples(session: Session, samples: Sequence[dict], annotations: Sequence[dict]) -> None:
    """One batch of samples and their annotations. A re-run of a sample replaces its
    annotations (ones that no longer exist are removed)."""
    upsert(session, Sample, samples, ("job_id", "index"))
    if samples:
        job_id = samples[0]["job_id"]
        keep = [(a["sample_index"], a["instance_id"]) for a in annotations]
        stale = delete(AnnotationRow).where(
            AnnotationRow.job_id == job_id,
            AnnotationRow.sample_index.in_([s["index"] for s in samples]),
        )
        if keep:
            stale = stale.where(tuple_(AnnotationRow.sample_index, AnnotationRow.instance_id).not_in(keep))
        session.execute(stale)
    upsert(session, AnnotationRow, annotations, ("job_id", "sample_index", "instance_id"))


def commit_batch(session: Session, shard: tuple[uuid.UUID, int, int, int], samples: Sequence[dict],
                 annotations: Sequence[dict]) -> None:
    """A shard's batch: its sample rows, their annotations (stale ones removed) and the shard's
    progress (`done`). On Postgres that is one statement, so one round trip: data-modifying
    CTEs, with `done` = the shard's rows as they were + the rows this statement inserted (the
    CTEs share one snapshot, so a count cannot see them). Elsewhere: the same, statement by
    statement, in the same transaction."""
    job_id, shard_index, start, stop = shard
    if session.get_bind().dialect.name != "postgresql" or not samples:
        upsert_samples(session, samples, annotations)
        set_shard_done(session, job_id, shard_index, start, stop)
        return
    from sqlalchemy import literal_column

    ins = dialect_insert(session, Sample).values(list(samples))
    cols = [c for c in samples[0] if c not in ("job_id", "index", "created_at")]
    rows = ins.on_conflict_do_update(index_elements=["job_id", "index"], set_={c: ins.excluded[c] for c in cols}) \
        .returning(literal_column("(xmax = 0)").label("inserted")).cte("batch_samples")
    stale = delete(AnnotationRow).where(AnnotationRow.job_id == job_id,
                                        AnnotationRow.sample_index.in_([r["index"] for r in samples]))
    keep = [(a["sample_index"], a["instance_id"]) for a in annotations]
    if keep:
        stale = stale.where(tuple_(AnnotationRow.sample_index, AnnotationRow.instance_id).not_in(keep))
    ctes = [rows, stale.returning(AnnotationRow.sample_index).cte("stale_annotations")]
    if annotations:
        ann = dialect_insert(session, AnnotationRow).values(list(annotations))
        acols = [c for c in annotations[0] if c not in ("job_id", "sample_index", "instance_id")]
        ctes.append(ann.on_conflict_do_update(index_elements=["job_id", "sample_index", "instance_id"],
                                              set_={c: ann.excluded[c] for c in acols})
                    .returning(AnnotationRow.sample_index).cte("batch_annotations"))
    before = select(func.count()).select_from(Sample).where(
        Sample.job_id == job_id, Sample.index >= start, Sample.index < stop).scalar_subquery()
    inserted = select(func.count()).select_from(rows).where(rows.c.inserted).scalar_subquery()
    stmt = update(Shard).where(Shard.job_id == job_id, Shard.index == shard_index).values(done=before + inserted)
    for cte in ctes:
        stmt = stmt.add_cte(cte)
    session.execute(stmt)


def set_shard_done(session: Session, job_id: uuid.UUID, shard_index: int, start: int, stop: int) -> None:
    """The shard's progress = its stored samples (a count, not an increment: a retried batch
    or a second delivery cannot count twice). Same transaction as the batch's rows."""
    stored = select(func.count()).select_from(Sample).where(
        Sample.job_id == job_id, Sample.index >= start, Sample.index < stop).scalar_subquery()
    session.execute(update(Shard).where(Shard.job_id == job_id, Shard.index == shard_index).values(done=stored))


def upsert_export(session: Session, row: dict) -> None:
    upsert(session, Export, [row], ("job_id", "format"))


def list_exports(session: Session, job_id: uuid.UUID) -> list[Export]:
    return list(session.scalars(select(Export).where(Export.job_id == job_id).order_by(Export.format)))


def get_export(session: Session, job_id: uuid.UUID, fmt: str) -> Export | None:
    return session.get(Export, (job_id, fmt))
