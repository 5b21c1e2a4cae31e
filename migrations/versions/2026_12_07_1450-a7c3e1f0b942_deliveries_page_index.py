"""webhook deliveries: the page index ends in the id

An endpoint's delivery log is keyset-paginated on (created_at, id). With the id in the index the
cursor's row comparison is one index range; without it, a deep page filtered every newer row.

Built CONCURRENTLY, outside the migration's transaction (the delivery log is a large table, and
a plain CREATE INDEX would block the worker's writes for the whole build), before the old index
is dropped. If a build fails, PostgreSQL leaves an INVALID index behind: drop it and run the
upgrade again.

Revision ID: a7c3e1f0b942
Revises: 3b7e2c9d4f10
Create Date: 2026-12-07 14:50:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = 'a7c3e1f0b942'
down_revision: str | None = '3b7e2c9d4f10'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index('ix_webhook_deliveries_endpoint_created_id', 'webhook_deliveries', ['endpoint_id', 'created_at', 'id'], postgresql_concurrently=True)
        op.drop_index('ix_webhook_deliveries_endpoint_created', table_name='webhook_deliveries', postgresql_concurrently=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index('ix_webhook_deliveries_endpoint_created', 'webhook_deliveries', ['endpoint_id', 'created_at'], postgresql_concurrently=True)
        op.drop_index('ix_webhook_deliveries_endpoint_created_id', table_name='webhook_deliveries', postgresql_concurrently=True)
