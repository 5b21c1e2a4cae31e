"""test mode: livemode on shipments, their events and tag links, feed events and webhook
endpoints; the sellers' simulated partners; recorded test emails (product.md §11.2)

Existing rows are live: the new columns default to true, which rewrites no table. A seller's
pages and feed then read one mode at a time, so `livemode` joins the seller's indexes right
after the seller: the new indexes are built CONCURRENTLY, outside the migration's transaction
(these are the largest tables, and a plain CREATE INDEX would block their writes for the whole
build), before the old ones are dropped. If a build fails, PostgreSQL leaves an INVALID index
behind: drop it and run the upgrade again.

Revision ID: d8b25d6b47bd
Revises: ed393ce6e89c
Create Date: 2026-12-07 15:50:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'd8b25d6b47bd'
down_revision: str | None = 'ed393ce6e89c'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVEMODE_TABLES = ('shipments', 'shipment_events', 'shipment_tags', 'events', 'webhook_endpoints')
# (new index, table, columns, unique, the index it replaces)
MODE_INDEXES = (
    ('ix_shipments_seller_mode_created', 'shipments', ['seller_id', 'livemode', 'created_at', 'id'], False, 'ix_shipments_seller_created'),
    ('ix_shipments_seller_mode_status_created', 'shipments', ['seller_id', 'livemode', 'status', 'created_at', 'id'], False, 'ix_shipments_seller_status_created'),
    ('ix_shipment_tags_seller_mode_tag_created', 'shipment_tags', ['seller_id', 'livemode', 'tag_id', 'created_at', 'shipment_id'], False, 'ix_shipment_tags_seller_tag_created'),
    ('ix_events_seller_mode_transaction_position', 'events', ['seller_id', 'livemode', 'transaction_id', 'position'], True, 'ix_events_seller_transaction_position'),
)


def upgrade() -> None:
    op.create_table('test_emails',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('seller_id', sa.Uuid(), nullable=False),
    sa.Column('shipment_id', sa.Uuid(), nullable=False),
    sa.Column('template', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('to', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('context', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['seller_id'], ['sellers.id'], name=op.f('fk_test_emails_seller_id_sellers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['shipment_id'], ['shipments.id'], name=op.f('fk_test_emails_shipment_id_shipments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_test_emails'))
    )
    op.create_index('ix_test_emails_seller_created', 'test_emails', ['seller_id', 'created_at', 'id'], unique=False)
    op.create_index('ix_test_emails_shipment_id', 'test_emails', ['shipment_id'], unique=False)
    op.create_index('ix_test_emails_created_at', 'test_emails', ['created_at'], unique=False)
    for table in LIVEMODE_TABLES:
        op.add_column(table, sa.Column('livemode', sa.Boolean(), server_default='true', nullable=False))
    # A test key's idempotency keys are stored as "test <key>"; a key goes with its shipment
    # (test data is cleared). The table holds a day of keys: both changes are quick.
    op.drop_constraint(op.f('fk_idempotency_keys_shipment_id_shipments'), 'idempotency_keys', type_='foreignkey')
    op.create_foreign_key(op.f('fk_idempotency_keys_shipment_id_shipments'), 'idempotency_keys', 'shipments', ['shipment_id'], ['id'], ondelete='CASCADE')
    op.alter_column('idempotency_keys', 'key',
               existing_type=sa.VARCHAR(length=255),
               type_=sqlmodel.sql.sqltypes.AutoString(length=300),
               existing_nullable=False)
    op.add_column('partners', sa.Column('simulates_for_seller_id', sa.Uuid(), nullable=True))
    op.create_unique_constraint(op.f('uq_partners_simulates_for_seller_id'), 'partners', ['simulates_for_seller_id'])
    op.create_foreign_key(op.f('fk_partners_simulates_for_seller_id_sellers'), 'partners', 'sellers', ['simulates_for_seller_id'], ['id'], ondelete='CASCADE')
    op.drop_constraint(op.f('ck_partners_status_known'), 'partners', type_='check')
    op.create_check_constraint(op.f('ck_partners_status_known'), 'partners', "status IN ('pending', 'approved', 'suspended', 'simulated')")
    with op.get_context().autocommit_block():
        for name, table, columns, unique, replaced in MODE_INDEXES:
            op.create_index(name, table, columns, unique=unique, postgresql_concurrently=True)
            op.drop_index(replaced, table_name=table, postgresql_concurrently=True)


def downgrade() -> None:
    # Test data goes with the columns that tell it apart from live data.
    op.execute("DELETE FROM idempotency_keys WHERE key LIKE 'test %'")
    op.execute("DELETE FROM events WHERE NOT livemode")
    op.execute("DELETE FROM webhook_endpoints WHERE NOT livemode")
    op.execute("DELETE FROM shipments WHERE NOT livemode")
    op.execute("DELETE FROM partners WHERE status = 'simulated'")
    op.drop_constraint(op.f('ck_partners_status_known'), 'partners', type_='check')
    op.create_check_constraint(op.f('ck_partners_status_known'), 'partners', "status IN ('pending', 'approved', 'suspended')")
    with op.get_context().autocommit_block():
        for name, table, columns, unique, replaced in MODE_INDEXES:
            without_mode = [column for column in columns if column != 'livemode']
            op.create_index(replaced, table, without_mode, unique=unique, postgresql_concurrently=True)
            op.drop_index(name, table_name=table, postgresql_concurrently=True)
    op.drop_constraint(op.f('fk_partners_simulates_for_seller_id_sellers'), 'partners', type_='foreignkey')
    op.drop_constraint(op.f('uq_partners_simulates_for_seller_id'), 'partners', type_='unique')
    op.drop_column('partners', 'simulates_for_seller_id')
    op.alter_column('idempotency_keys', 'key',
               existing_type=sqlmodel.sql.sqltypes.AutoString(length=300),
               type_=sa.VARCHAR(length=255),
               existing_nullable=False)
    op.drop_constraint(op.f('fk_idempotency_keys_shipment_id_shipments'), 'idempotency_keys', type_='foreignkey')
    op.create_foreign_key(op.f('fk_idempotency_keys_shipment_id_shipments'), 'idempotency_keys', 'shipments', ['shipment_id'], ['id'])
    for table in LIVEMODE_TABLES:
        op.drop_column(table, 'livemode')
    op.drop_index('ix_test_emails_created_at', table_name='test_emails')
    op.drop_index('ix_test_emails_shipment_id', table_name='test_emails')
    op.drop_index('ix_test_emails_seller_created', table_name='test_emails')
    op.drop_table('test_emails')
