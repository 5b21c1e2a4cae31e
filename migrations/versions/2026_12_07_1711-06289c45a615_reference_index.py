"""shipments: a seller's shipments by its own reference (GET /shipments?reference=, product.md
§12.4)

Built CONCURRENTLY, outside the migration's transaction (shipments is a large table, and a plain
CREATE INDEX would block its writes for the whole build). If a build fails, PostgreSQL leaves an
INVALID index behind: drop it and run the upgrade again.

Revision ID: 06289c45a615
Revises: d8b25d6b47bd
Create Date: 2026-12-07 17:11:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '06289c45a615'
down_revision: str | None = 'd8b25d6b47bd'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index('ix_shipments_seller_mode_reference_created', 'shipments', ['seller_id', 'livemode', 'reference', 'created_at', 'id'], unique=False, postgresql_concurrently=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_shipments_seller_mode_reference_created', table_name='shipments', postgresql_concurrently=True)
