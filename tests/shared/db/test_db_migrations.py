from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from shared.db.migrate import current_heads, downgrade, upgrade
from shared.db.models import metadata
from tests.support.services import postgres_database


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, metadata)
    finally:
        engine.dispose()


def test_postgres_migrations_match_the_models_and_go_down_and_up():
    with postgres_database(migrate=False) as url:
        upgrade(url)
        assert _diff(url) == []
        downgrade(url, "base")
        assert set(inspect(create_engine(url)).get_table_names()) <= {"alembic_version"}
        upgrade(url)
        assert _diff(url) == []


def test_sqlite_uses_the_same_migrations(tmp_path):
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    engine = create_engine(url)
    names = set(inspect(engine).get_table_names())
    assert {"tenants", "api_keys", "jobs", "shards", "samples", "annotations", "exports"} <= names
    with engine.connect() as c:
        assert c.exec_driver_sql("select version_num from alembic_version").scalar() in current_heads()
    assert _diff(url) == []


def test_constraints_follow_the_naming_convention(pg_url):
    insp = inspect(create_engine(pg_url))
    assert insp.get_pk_constraint("samples")["name"] == "pk_samples"
    fks = {fk["name"] for fk in insp.get_foreign_keys("annotations")}
    assert fks == {"fk_annotations_job_id_sample_index_samples"}
    uqs = {u["name"] for u in insp.get_unique_constraints("jobs")}
    assert "uq_jobs_tenant_id_idempotency_key" in uqs
