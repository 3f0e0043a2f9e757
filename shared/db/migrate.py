"""Run the Alembic migrations of `migrations/` programmatically (`dsgen migrate`, tests,
embedded mode). Postgres and SQLite go through the same scripts."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT_LOCATION = REPO_ROOT / "migrations"


def alembic_config(database_url: str) -> Config:
    if not (SCRIPT_LOCATION / "env.py").is_file():
        raise RuntimeError(f"migrations not found at {SCRIPT_LOCATION}")
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def current_heads() -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())
