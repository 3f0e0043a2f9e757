"""shards.done: samples stored per shard, kept by the shard's batch commits (status polls read
progress from the shards alone instead of counting samples)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('shards', sa.Column('done', sa.Integer(), server_default='0', nullable=False))
    op.execute(
        "UPDATE shards SET done = (SELECT count(*) FROM samples "
        "WHERE samples.job_id = shards.job_id AND samples.\"index\" >= shards.start AND samples.\"index\" < shards.stop)"
    )


def downgrade() -> None:
    op.drop_column('shards', 'done')
