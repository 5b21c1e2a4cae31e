"""issue 14 indexes: the ones the service's queries use, none it does not

Tag- and status-filtered pages of one owner, the feed of a seller, the foreign keys a deleted
shipment cascades through; shipment_tags gains copies of its shipment's seller, partner and
creation time (backfilled here) so that one index serves a tag-filtered page.

Revision ID: 91ac0dfb25d5
Revises: 8d5fd39de8a3
Create Date: 2026-12-07 06:13:50.752525+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '91ac0dfb25d5'
down_revision: str | None = '8d5fd39de8a3'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Tag links carry their shipment's owners and creation time.
    op.add_column('shipment_tags', sa.Column('seller_id', sa.Uuid(), nullable=True))
    op.add_column('shipment_tags', sa.Column('partner_id', sa.Uuid(), nullable=True))
    op.add_column('shipment_tags', sa.Column('created_at', sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE shipment_tags SET seller_id = s.seller_id, partner_id = s.partner_id,"
        " created_at = s.created_at FROM shipments AS s WHERE s.id = shipment_tags.shipment_id"
    )
    for column in ('seller_id', 'partner_id', 'created_at'):
        op.alter_column('shipment_tags', column, nullable=False)
    op.drop_index('ix_shipment_tags_tag_id', table_name='shipment_tags')
    op.create_index('ix_shipment_tags_seller_tag_created', 'shipment_tags', ['seller_id', 'tag_id', 'created_at', 'shipment_id'], unique=False)
    op.create_index('ix_shipment_tags_partner_tag_created', 'shipment_tags', ['partner_id', 'tag_id', 'created_at', 'shipment_id'], unique=False)

    # Status-filtered pages of one owner.
    op.drop_index('ix_shipments_status', table_name='shipments')
    op.create_index('ix_shipments_seller_status_created', 'shipments', ['seller_id', 'status', 'created_at', 'id'], unique=False)
    op.create_index('ix_shipments_partner_status_created', 'shipments', ['partner_id', 'status', 'created_at', 'id'], unique=False)

    # The feed's index is the only one on position (unique per seller; the identity keeps it
    # unique overall).
    op.drop_index('ix_events_seller_position', table_name='events')
    op.create_index('ix_events_seller_position', 'events', ['seller_id', 'position'], unique=True)
    op.drop_constraint('uq_events_position', 'events', type_='unique')

    # What deleting a shipment cascades through (or checks).
    op.create_index('ix_events_shipment_id', 'events', ['shipment_id'], unique=False)
    op.create_index('ix_webhook_deliveries_event_id', 'webhook_deliveries', ['event_id'], unique=False)
    op.create_index('ix_outbox_messages_shipment_id', 'outbox_messages', ['shipment_id'], unique=False)
    op.create_index('ix_idempotency_keys_shipment_id', 'idempotency_keys', ['shipment_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_idempotency_keys_shipment_id', table_name='idempotency_keys')
    op.drop_index('ix_outbox_messages_shipment_id', table_name='outbox_messages')
    op.drop_index('ix_webhook_deliveries_event_id', table_name='webhook_deliveries')
    op.drop_index('ix_events_shipment_id', table_name='events')

    op.create_unique_constraint('uq_events_position', 'events', ['position'])
    op.drop_index('ix_events_seller_position', table_name='events')
    op.create_index('ix_events_seller_position', 'events', ['seller_id', 'position'], unique=False)

    op.drop_index('ix_shipments_partner_status_created', table_name='shipments')
    op.drop_index('ix_shipments_seller_status_created', table_name='shipments')
    op.create_index('ix_shipments_status', 'shipments', ['status'], unique=False)

    op.drop_index('ix_shipment_tags_partner_tag_created', table_name='shipment_tags')
    op.drop_index('ix_shipment_tags_seller_tag_created', table_name='shipment_tags')
    op.create_index('ix_shipment_tags_tag_id', 'shipment_tags', ['tag_id'], unique=False)
    op.drop_column('shipment_tags', 'created_at')
    op.drop_column('shipment_tags', 'partner_id')
    op.drop_column('shipment_tags', 'seller_id')
