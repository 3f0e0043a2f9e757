"""Dialect-aware INSERT and the batch upsert every repository uses (Postgres and SQLite)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session


def dialect_insert(session: Session, model: Any):  # noqa: ANN201 - a dialect's Insert construct
    """An INSERT construct of the session's dialect (both have on_conflict_do_update/nothing)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover
        raise RuntimeError(f"unsupported database {name}")
    return insert(model)


def upsert(session: Session, model: Any, rows: Sequence[dict], keys: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET every other column, in one statement."""
    if not rows:
        return
    stmt = dialect_insert(session, model).values(list(rows))
    columns = [c for c in rows[0] if c not in keys and c != "created_at"]
    stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns})
    session.execute(stmt)
