"""Dataset and dataset-version queries, taking a SQLAlchemy `Session`.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import (
    Dataset,
    DatasetVersion,
    Job,
    utcnow,
)
from shared.db.upsert import dialect_insert


def get_dataset(session: Session, tenant_id: uuid.UUID, name: str, *, lock: bool = False) -> Dataset | None:
    q = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.name == name)
    if lock:
        q = q.with_for_update()
    return session.scalar(q)


def get_or_create_dataset(session: Session, tenant_id: uuid.UUID, name: str) -> Dataset:
    """Race-safe: two requests naming a new dataset at once make one row."""
    stmt = dialect_insert(session, Dataset).values(id=uuid.uuid4(), tenant_id=tenant_id, name=name, created_at=utcnow())
    session.execute(stmt.on_conflict_do_nothing(index_elements=["tenant_id", "name"]))
    return get_dataset(session, tenant_id, name)  # type: ignore[return-value]


def get_dataset_by_id(session: Session, dataset_id: uuid.UUID) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def dataset_names(session: Session, dataset_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    ids = set(dataset_ids)
    if not ids:
        return {}
    return {d.id: d.name for d in session.scalars(select(Dataset).where(Dataset.id.in_(ids)))}


def lock_dataset(session: Session, dataset_id: uuid.UUID) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id).with_for_update())


def list_datasets(session: Session, tenant_id: uuid.UUID) -> list[tuple[Dataset, int, int | None]]:
    """(dataset, number of versions, latest version), by name."""
    versions = (select(DatasetVersion.dataset_id, func.count().label("n"), func.max(DatasetVersion.version).label("latest"))
                .group_by(DatasetVersion.dataset_id).subquery())
    rows = session.execute(
        select(Dataset, versions.c.n, versions.c.latest).outerjoin(versions, versions.c.dataset_id == Dataset.id)
        .where(Dataset.tenant_id == tenant_id).order_by(Dataset.name)
    )
    return [(d, n or 0, latest) for d, n, latest in rows]


def list_versions(session: Session, dataset_id: uuid.UUID) -> list[tuple[DatasetVersion, Job]]:
    rows = session.execute(
        select(DatasetVersion, Job).join(Job, Job.id == DatasetVersion.job_id)
        .where(DatasetVersion.dataset_id == dataset_id).order_by(DatasetVersion.version.desc())
    )
    return [(v, j) for v, j in rows]


def get_version(session: Session, dataset_id: uuid.UUID, version: int | None) -> DatasetVersion | None:
    """`None`: the latest version."""
    q = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id)
    q = q.where(DatasetVersion.version == version) if version is not None else q.order_by(DatasetVersion.version.desc()).limit(1)
    return session.scalar(q)


def version_of_job(session: Session, job_id: uuid.UUID) -> DatasetVersion | None:
    return session.scalar(select(DatasetVersion).where(DatasetVersion.job_id == job_id))


def max_version(session: Session, dataset_id: uuid.UUID) -> int:
    return session.scalar(select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == dataset_id)) or 0


def jobs_of_dataset(session: Session, dataset_id: uuid.UUID, limit: int = 50) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.dataset_id == dataset_id)
                                .order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)))
