"""Request-scoped dependencies: the app's resources and the caller's tenant."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.config import Settings
from shared.db.session import UnitOfWork
from shared.dispatch import Dispatcher
from shared.errors import Unauthorized
from shared.storage import ObjectStore


@dataclass
class Resources:
    settings: Settings
    session_factory: Callable[[], Any]
    store: ObjectStore
    dispatcher: Dispatcher
    closers: list[Callable[[], None]] = field(default_factory=list)

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.session_factory)


def resources(request: Request) -> Resources:
    return request.app.state.resources


bearer = HTTPBearer(auto_error=False, description="an API key from `dsgen keys create`")


def current_tenant(request: Request,
                   credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> uuid.UUID:
    """`Authorization: Bearer <api key>` -> tenant id (401 otherwise)."""
    from shared import auth
    from shared.db import repositories as repo

    res: Resources = request.app.state.resources
    with res.uow() as uow:
        given = credentials.credentials.strip() if credentials is not None else ""
        if res.settings.embedded_tenant and not given:
            return repo.get_or_create_tenant(uow.session, res.settings.embedded_tenant).id
        if not given:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' (create one with `dsgen keys create`)")
        tenant = auth.tenant_for_key(uow.session, given)
        if tenant is None:
            raise Unauthorized("unknown or revoked API key")
        if res.settings.embedded_tenant:
            # Embedded mode has one user: a valid key (the dashboard's, DSGEN_API_KEY of the
            # CLI) acts as the same tenant as no key, so the CLI and the dashboard see one list.
            return repo.get_or_create_tenant(uow.session, res.settings.embedded_tenant).id
        return tenant.id
