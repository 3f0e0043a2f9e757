"""Request-scoped dependencies: the app's resources and the caller's tenant."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.status_cache import StatusCache
from shared.config import Settings
from shared.db.session import UnitOfWork
from shared.dispatch.dispatcher import Dispatcher
from shared.errors import Unauthorized
from shared.storage.objects import ObjectStore
from shared.tenants import api_keys as auth


@dataclass
class Resources:
    settings: Settings
    session_factory: Callable[[], Any]
    store: ObjectStore
    dispatcher: Dispatcher
    closers: list[Callable[[], None]] = field(default_factory=list)
    keys: "KeyCache" = field(default_factory=lambda: KeyCache(0))
    read_session_factory: Callable[[], Any] | None = None
    status: StatusCache = field(default_factory=lambda: StatusCache(0))

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.session_factory)

    def read_uow(self) -> UnitOfWork:
        """For GETs answered by a single statement (see `make_read_session_factory`)."""
        return UnitOfWork(self.read_session_factory or self.session_factory)


class KeyCache:
    """API key hash -> tenant id for `ttl_s` seconds, so a dashboard polling every second
    costs no key lookup per request; a revoked key keeps working for at most `ttl_s`."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000):
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[str, tuple[float, uuid.UUID]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> uuid.UUID | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            hit = self._entries.get(key_hash)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key_hash: str, tenant_id: uuid.UUID) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key_hash] = (time.monotonic() + self.ttl_s, tenant_id)


# The two dependencies of every route are coroutines: FastAPI runs a plain `def` dependency in
# the thread pool, and each hop there costs a status poll more CPU than its database query.
async def resources(request: Request) -> Resources:
    return request.app.state.resources


bearer = HTTPBearer(auto_error=False, description="an API key from `dsgen keys create`")


async def current_tenant(request: Request,
                         credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> uuid.UUID:
    """`Authorization: Bearer <api key>` -> tenant id (401 otherwise); a cached key needs no
    database, a lookup runs in the thread pool (off the event loop)."""
    from starlette.concurrency import run_in_threadpool

    res: Resources = request.app.state.resources
    key = credentials.credentials.strip() if credentials is not None else ""
    cached = res.keys.get(auth.hash_key(key)) if key else None
    if cached is not None:
        return cached
    return await run_in_threadpool(_lookup_tenant, res, key)


def _lookup_tenant(res: Resources, key: str) -> uuid.UUID:
    from shared.tenants import repository as tenants_repo

    with res.uow() as uow:
        if res.settings.embedded_tenant and not key:
            return tenants_repo.get_or_create_tenant(uow.session, res.settings.embedded_tenant).id
        if not key:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' (create one with `dsgen keys create`)")
        tenant = auth.tenant_for_key(uow.session, key)
        if tenant is None:
            raise Unauthorized("unknown or revoked API key")
        if res.settings.embedded_tenant:
            # Embedded mode has one user: a valid key (the dashboard's, DSGEN_API_KEY of the
            # CLI) acts as the same tenant as no key, so the CLI and the dashboard see one list.
            tenant_id = tenants_repo.get_or_create_tenant(uow.session, res.settings.embedded_tenant).id
            res.keys.put(auth.hash_key(key), tenant_id)
            return tenant_id
        res.keys.put(auth.hash_key(key), tenant.id)
        return tenant.id


# What every route declares: the caller's tenant and the app's resources.
Tenant = Annotated[uuid.UUID, Depends(current_tenant)]
Res = Annotated[Resources, Depends(resources)]
