"""partner approval

Partners gain a status set by the operator: pending, approved or suspended. Partners that exist
when this runs are carrying shipments already, so they become approved (approved now) and
nobody loses work; every partner that signs up afterwards starts pending.

Revision ID: 83aec365b78d
Revises: 1d92fbfb70a6
Create Date: 2026-12-07 03:08:49.430191+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '83aec365b78d'
down_revision: str | None = '1d92fbfb70a6'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows are filled with 'approved' by this default; the default then becomes
    # 'pending', so a row inserted without a status fails safe.
    op.add_column('partners', sa.Column('status', sa.String(length=20), server_default='approved', nullable=False))
    op.alter_column('partners', 'status', server_default='pending')
    op.add_column('partners', sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('partners', sa.Column('suspended_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('partners', sa.Column('suspended_reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))
    op.execute("UPDATE partners SET approved_at = now()")
    op.create_check_constraint(
        'status_known', 'partners', "status IN ('pending', 'approved', 'suspended')"
    )


def downgrade() -> None:
    op.drop_constraint(op.f('ck_partners_status_known'), 'partners', type_='check')
    op.drop_column('partners', 'suspended_reason')
    op.drop_column('partners', 'suspended_at')
    op.drop_column('partners', 'approved_at')
    op.drop_column('partners', 'status')
