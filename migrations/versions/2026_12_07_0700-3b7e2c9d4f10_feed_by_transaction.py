"""feed by transaction: events record the transaction that wrote them

The feed lists a seller's events in (transaction, position) order up to the oldest transaction
still running, instead of serializing every writer of a seller on an advisory lock. Existing
events get 0: they all committed long ago, so they come first, in position order.

Revision ID: 3b7e2c9d4f10
Revises: 5c1f0e7a9b2d
Create Date: 2026-12-07 07:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '3b7e2c9d4f10'
down_revision: str | None = '5c1f0e7a9b2d'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TRANSACTION_ID = sa.text("(pg_current_xact_id()::text)::bigint")


def upgrade() -> None:
    # A constant default fills existing rows without rewriting the table; new rows then get
    # their own transaction's id.
    op.add_column(
        'events',
        sa.Column('transaction_id', sa.BigInteger(), nullable=False, server_default=sa.text('0')),
    )
    op.alter_column('events', 'transaction_id', server_default=CURRENT_TRANSACTION_ID)
    op.create_index(
        'ix_events_seller_transaction_position',
        'events',
        ['seller_id', 'transaction_id', 'position'],
        unique=True,
    )
    op.drop_index('ix_events_seller_position', table_name='events')


def downgrade() -> None:
    op.create_index('ix_events_seller_position', 'events', ['seller_id', 'position'], unique=True)
    op.drop_index('ix_events_seller_transaction_position', table_name='events')
    op.drop_column('events', 'transaction_id')
