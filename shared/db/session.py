"""Engine factory and the unit of work every transport opens around one domain call."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.errors import ServiceUnavailable

log = logging.getLogger(__name__)

# Errors that mean "the database cannot be reached", as opposed to a bug in a query.
DB_UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, sa_exc.DisconnectionError)


def make_engine(settings: Settings | str, **kwargs: Any) -> Engine:
    url = settings if isinstance(settings, str) else settings.database_url
    timeout = 3 if isinstance(settings, str) else settings.database_connect_timeout_s
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_timeout", timeout)
    return create_engine(url, connect_args={"connect_timeout": timeout}, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def make_read_session_factory(session_factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions for requests that only read with one statement (status polls, pages): on
    Postgres in autocommit, so a poll costs no BEGIN and COMMIT round trips. Elsewhere the
    factory itself."""
    engine = session_factory.kw.get("bind") if hasattr(session_factory, "kw") else None
    if engine is None or engine.dialect.name != "postgresql":
        return session_factory
    return sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


def describe_db_error(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


class UnitOfWork:
    """One transaction: commit on success, rollback on error, then run after-commit hooks.

    Work that must only happen once the rows are visible to others (sending a task) is
    registered with `after_commit`; it never runs when the transaction rolls back. A failing
    hook is logged and swallowed: the rows are committed, and the reconciler re-sends what
    a hook failed to send.
    """

    def __init__(self, session_factory: Callable[[], Session]):
        self._factory = session_factory
        self._hooks: list[Callable[[], None]] = []
        self.session: Session

    def __enter__(self) -> "UnitOfWork":
        self.session = self._factory()
        self._hooks = []
        return self

    def after_commit(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    def commit(self) -> None:
        try:
            self.session.commit()
        except DB_UNAVAILABLE as err:
            raise ServiceUnavailable("database", describe_db_error(err)) from err
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:  # noqa: BLE001 - see class docstring
                log.warning("after-commit hook failed; the reconciler will retry", exc_info=True)

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        try:
            if exc_type is None:
                self.commit()
            else:
                self._hooks = []
                try:
                    self.session.rollback()
                except Exception:  # noqa: BLE001 - the connection may be gone already
                    pass
                if isinstance(exc, DB_UNAVAILABLE):
                    raise ServiceUnavailable("database", describe_db_error(exc)) from exc
        finally:
            self.session.close()
