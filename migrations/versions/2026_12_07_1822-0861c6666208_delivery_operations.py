"""delivery operations: when and where an event happened, failed attempts, scan ids

Timeline events gain `occurred_at` (when it happened, as the partner says), a location (city
and coordinates beside the zip code), a failed attempt's `failure_reason` and private `note`,
and the `scan_id` of the scan that recorded them (unique per shipment: a retried scan finds its
event). Shipments gain `delivery_attempts`.

`occurred_at` of the events already stored is their `created_at`: they were recorded when they
happened. The column is added without a default (so that existing rows read NULL rather than the
moment of the migration), then given `now()` as its default, which dates the events that servers
still running the previous code insert meanwhile. Existing rows are filled in batches of
FILL_BATCH, each its own short transaction, so no lock is held on the table for the whole fill.
NOT NULL then comes from a CHECK added NOT VALID and validated (a scan that blocks no writes),
which lets SET NOT NULL skip its own scan.

The other checks are added NOT VALID and validated the same way; the scan-id index is built
CONCURRENTLY, outside the migration's transaction, like the other indexes of live tables here.

Revision ID: 0861c6666208
Revises: fbf27d6b5d8f
Create Date: 2026-12-07 18:22:01.830846+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0861c6666208'
down_revision: str | None = 'fbf27d6b5d8f'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCAN_INDEX = 'uq_shipment_events_scan_id'
REASONS = (
    'recipient_unavailable', 'address_not_found', 'refused', 'access_restricted',
    'business_closed', 'weather', 'damaged', 'other',
)
CHECKS = {
    'ck_shipment_events_location_lat_range': 'location_lat BETWEEN -90 AND 90',
    'ck_shipment_events_location_lon_range': 'location_lon BETWEEN -180 AND 180',
    'ck_shipment_events_failure_reason_known': 'failure_reason IN ({})'.format(
        ', '.join(f"'{reason}'" for reason in REASONS)
    ),
}


FILL_BATCH = 10_000
FILL_OCCURRED_AT = """
UPDATE shipment_events SET occurred_at = created_at
WHERE id IN (SELECT id FROM shipment_events WHERE occurred_at IS NULL LIMIT :batch)
"""
OCCURRED_AT_CHECK = 'ck_shipment_events_occurred_at_not_null'


def upgrade() -> None:
    op.add_column('shipment_events', sa.Column('location_city', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
    op.add_column('shipment_events', sa.Column('location_lat', sa.Float(), nullable=True))
    op.add_column('shipment_events', sa.Column('location_lon', sa.Float(), nullable=True))
    op.add_column('shipment_events', sa.Column('failure_reason', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=True))
    op.add_column('shipment_events', sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))
    op.add_column('shipment_events', sa.Column('scan_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
    op.add_column('shipment_events', sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=True))
    op.alter_column('shipment_events', 'occurred_at', server_default=sa.text('now()'))
    op.add_column('shipments', sa.Column('delivery_attempts', sa.Integer(), server_default='0', nullable=False))
    for name, condition in CHECKS.items():
        op.execute(f'ALTER TABLE shipment_events ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID')
    op.execute('ALTER TABLE shipments ADD CONSTRAINT ck_shipments_delivery_attempts_not_negative CHECK (delivery_attempts >= 0) NOT VALID')
    with op.get_context().autocommit_block():
        _fill_occurred_at()
        op.execute(f'ALTER TABLE shipment_events DROP CONSTRAINT IF EXISTS {OCCURRED_AT_CHECK}')
        op.execute(f'ALTER TABLE shipment_events ADD CONSTRAINT {OCCURRED_AT_CHECK} CHECK (occurred_at IS NOT NULL) NOT VALID')
        for name in (*CHECKS, OCCURRED_AT_CHECK):
            op.execute(f'ALTER TABLE shipment_events VALIDATE CONSTRAINT {name}')
        op.execute('ALTER TABLE shipments VALIDATE CONSTRAINT ck_shipments_delivery_attempts_not_negative')
        op.drop_index(SCAN_INDEX, table_name='shipment_events', postgresql_concurrently=True, if_exists=True)
        op.create_index(SCAN_INDEX, 'shipment_events', ['shipment_id', 'scan_id'], unique=True, postgresql_where=sa.text('scan_id IS NOT NULL'), postgresql_concurrently=True)
    # The validated check proves the column has no NULL: SET NOT NULL skips its scan.
    op.alter_column('shipment_events', 'occurred_at', nullable=False)
    op.execute(f'ALTER TABLE shipment_events DROP CONSTRAINT {OCCURRED_AT_CHECK}')


def _fill_occurred_at() -> None:
    """Date the events stored before the column, a batch per transaction (autocommit); as one
    statement in offline mode (`alembic upgrade --sql`), which cannot loop on row counts."""
    if op.get_context().as_sql:
        op.execute('UPDATE shipment_events SET occurred_at = created_at WHERE occurred_at IS NULL')
        return
    connection = op.get_bind()
    while connection.execute(sa.text(FILL_OCCURRED_AT), {'batch': FILL_BATCH}).rowcount:
        pass


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(SCAN_INDEX, table_name='shipment_events', postgresql_concurrently=True)
    op.drop_column('shipments', 'delivery_attempts')  # and its check
    for name in CHECKS:
        op.execute(f'ALTER TABLE shipment_events DROP CONSTRAINT {name}')
    op.drop_column('shipment_events', 'occurred_at')
    op.drop_column('shipment_events', 'scan_id')
    op.drop_column('shipment_events', 'note')
    op.drop_column('shipment_events', 'failure_reason')
    op.drop_column('shipment_events', 'location_lon')
    op.drop_column('shipment_events', 'location_lat')
    op.drop_column('shipment_events', 'location_city')
