"""schedules, schedule runs, datasets and their versions; jobs.dataset_id; samples.created_at index

Revision ID: 0002
Revises: 0001
Create Date: 2026-02-01
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('datasets',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_datasets_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datasets')),
    sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_datasets_tenant_id_name'))
    )
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('dataset_id', sa.Uuid(), nullable=True))
        batch.create_foreign_key(op.f('fk_jobs_dataset_id_datasets'), 'datasets', ['dataset_id'], ['id'],
                                 ondelete='SET NULL')
        batch.create_index(op.f('ix_jobs_dataset_id'), ['dataset_id'], unique=False)
    op.create_table('dataset_versions',
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('summary', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_versions_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_dataset_versions_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset_id', 'version', name=op.f('pk_dataset_versions')),
    sa.UniqueConstraint('job_id', name=op.f('uq_dataset_versions_job_id'))
    )
    op.create_table('schedules',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('dataset_id', sa.Uuid(), nullable=False),
    sa.Column('cron', sa.String(length=120), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('spec', JSON, nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('missed', sa.String(length=16), nullable=False),
    sa.Column('vary_seed', sa.Boolean(), nullable=False),
    sa.Column('next_fire_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_fired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_schedules_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_schedules_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedules')),
    sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_schedules_tenant_id_name'))
    )
    op.create_index(op.f('ix_schedules_next_fire_at'), 'schedules', ['next_fire_at'], unique=False)
    op.create_table('schedule_runs',
    sa.Column('schedule_id', sa.Uuid(), nullable=False),
    sa.Column('scheduled_for', sa.DateTime(timezone=True), nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_schedule_runs_job_id_jobs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'], name=op.f('fk_schedule_runs_schedule_id_schedules'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('schedule_id', 'scheduled_for', name=op.f('pk_schedule_runs'))
    )
    op.create_index(op.f('ix_samples_created_at'), 'samples', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_samples_created_at'), table_name='samples')
    op.drop_table('schedule_runs')
    op.drop_index(op.f('ix_schedules_next_fire_at'), table_name='schedules')
    op.drop_table('schedules')
    op.drop_table('dataset_versions')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_index(op.f('ix_jobs_dataset_id'))
        batch.drop_constraint(op.f('fk_jobs_dataset_id_datasets'), type_='foreignkey')
        batch.drop_column('dataset_id')
    op.drop_table('datasets')
