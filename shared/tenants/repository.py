"""Tenant and API-key queries, one function per question, taking a SQLAlchemy `Session`.
"""
from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import (
    ApiKey,
    Tenant,
)


def get_tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = get_tenant_by_name(session, name)
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def add_api_key(session: Session, tenant: Tenant, prefix: str, key_hash: str) -> ApiKey:
    key = ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=key_hash)
    session.add(key)
    session.flush()
    return key


def tenant_for_key_hash(session: Session, key_hash: str) -> Tenant | None:
    return session.scalar(
        select(Tenant).join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> None:
    """Serialise a tenant's submissions (limits and idempotency keys are checked under it)."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
