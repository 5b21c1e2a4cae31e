"""outbox: one run of the due index per lane

Revision ID: 5c1f0e7a9b2d
Revises: d66370444a24
Create Date: 2026-12-07 06:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '5c1f0e7a9b2d'
down_revision: str | None = 'd66370444a24'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As backend/outbox/models.py writes it: the claim of each lane walks only its own rows.
LANE_OF_ROW = "(\nCASE\n    WHEN kind = 'webhook' THEN 'webhooks'\n    ELSE 'emails'\nEND)"


def upgrade() -> None:
    op.create_index(
        'ix_outbox_messages_lane_due',
        'outbox_messages',
        [sa.text(LANE_OF_ROW), 'next_attempt_at'],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index('ix_outbox_messages_due', table_name='outbox_messages', postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.create_index('ix_outbox_messages_due', 'outbox_messages', ['next_attempt_at'], unique=False, postgresql_where=sa.text("status = 'pending'"))
    op.drop_index('ix_outbox_messages_lane_due', table_name='outbox_messages', postgresql_where=sa.text("status = 'pending'"))
