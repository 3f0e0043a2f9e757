"""API keys: `dsg_<prefix>_<secret>`; only a SHA-256 of the whole key is stored."""
from __future__ import annotations

import hashlib
import secrets

from sqlalchemy.orm import Session

from shared.db.models import Tenant
from shared.tenants import repository as tenants_repo

KEY_PREFIX = "dsg_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(session: Session, tenant_name: str) -> tuple[Tenant, str]:
    """Create (or reuse) the tenant and a new key for it; the key is returned once, in clear."""
    name = tenant_name.strip()
    if not name or len(name) > 100:
        raise ValueError("tenant name must have 1 to 100 characters")
    tenant = tenants_repo.get_or_create_tenant(session, name)
    public = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{public}_{secrets.token_urlsafe(32)}"
    tenants_repo.add_api_key(session, tenant, f"{KEY_PREFIX}{public}", hash_key(key))
    return tenant, key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    return tenants_repo.tenant_for_key_hash(session, hash_key(key))
