"""retention indexes

The worker's retention purge (backend/retention.py) deletes the oldest rows of these tables in
small batches; each index lets a batch find them without scanning the table. (The cascade from
an event to its delivery log uses webhook_deliveries.event_id, from the previous revision.)

Built CONCURRENTLY, outside the migration's transaction: these tables are the large ones, and a
plain CREATE INDEX would block their writes (every shipment change) for the whole build. If a
build fails, PostgreSQL leaves an INVALID index behind: drop it and run the upgrade again.

Revision ID: d66370444a24
Revises: 91ac0dfb25d5
Create Date: 2026-12-07 06:14:44.524301+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'd66370444a24'
down_revision: str | None = '91ac0dfb25d5'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SENT = sa.text("status = 'sent'")


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index('ix_events_created_at', 'events', ['created_at'], postgresql_concurrently=True)
        op.create_index('ix_idempotency_keys_created_at', 'idempotency_keys', ['created_at'], postgresql_concurrently=True)
        op.create_index('ix_outbox_messages_sent_at', 'outbox_messages', ['sent_at'], postgresql_where=SENT, postgresql_concurrently=True)
        op.create_index('ix_webhook_deliveries_created_at', 'webhook_deliveries', ['created_at'], postgresql_concurrently=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_webhook_deliveries_created_at', table_name='webhook_deliveries', postgresql_concurrently=True)
        op.drop_index('ix_outbox_messages_sent_at', table_name='outbox_messages', postgresql_concurrently=True)
        op.drop_index('ix_idempotency_keys_created_at', table_name='idempotency_keys', postgresql_concurrently=True)
        op.drop_index('ix_events_created_at', table_name='events', postgresql_concurrently=True)
