"""webhook endpoints: the previous secret of a rotation, and one endpoint per URL

`previous_secret` and `previous_secret_expires_at` keep the secret before a rotation signing
beside the new one for the overlap the seller chose. Nullable, no default: no table rewrite.

A seller registers a URL once per mode: a unique index over (seller_id, livemode, md5(url))
(a digest, since a 2000-character URL outside ASCII is longer than a B-tree entry may be). It
also leads with the seller, so it replaces `ix_webhook_endpoints_seller_id`.

Duplicates already stored would fail the build, so they are removed first: of the endpoints a
seller has for one URL in one mode, the one kept is the one that is enabled, then the one not
failing, then the oldest. The others are deleted with their delivery logs; deliveries still
queued for them are skipped by the worker, and their events stay in the feed. (A receiver at
that URL got each event once per duplicate; it now gets it once, signed with the kept
endpoint's secret.)

The index is built CONCURRENTLY, outside the migration's transaction, like the other indexes
of a live table here, and before the columns are added: if the build fails (a duplicate
registered by a server still running the old code between the clean-up and the build), the
upgrade can simply run again: it cleans up again and drops the INVALID index left behind first.

Downgrading drops the previous secrets: receivers that have not yet switched to the new secret
of a rotation still in its overlap stop verifying deliveries.

Revision ID: fbf27d6b5d8f
Revises: 06289c45a615
Create Date: 2026-12-07 17:35:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = 'fbf27d6b5d8f'
down_revision: str | None = '06289c45a615'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

URL_INDEX = 'ix_webhook_endpoints_seller_mode_url'
SELLER_INDEX = 'ix_webhook_endpoints_seller_id'
REMOVE_DUPLICATES = """
DELETE FROM webhook_endpoints AS endpoint
USING (
    SELECT id, row_number() OVER (
        PARTITION BY seller_id, livemode, md5(url)
        ORDER BY enabled DESC, failing_since IS NULL DESC, created_at, id
    ) AS rank
    FROM webhook_endpoints
) AS ranked
WHERE endpoint.id = ranked.id AND ranked.rank > 1
"""


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(REMOVE_DUPLICATES)
        op.drop_index(URL_INDEX, table_name='webhook_endpoints', postgresql_concurrently=True, if_exists=True)
        op.create_index(URL_INDEX, 'webhook_endpoints', ['seller_id', 'livemode', sa.text('md5(url)')], unique=True, postgresql_concurrently=True)
        op.drop_index(SELLER_INDEX, table_name='webhook_endpoints', postgresql_concurrently=True, if_exists=True)
    op.add_column('webhook_endpoints', sa.Column('previous_secret', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
    op.add_column('webhook_endpoints', sa.Column('previous_secret_expires_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('webhook_endpoints', 'previous_secret_expires_at')
    op.drop_column('webhook_endpoints', 'previous_secret')
    with op.get_context().autocommit_block():
        op.create_index(SELLER_INDEX, 'webhook_endpoints', ['seller_id'], unique=False, postgresql_concurrently=True)
        op.drop_index(URL_INDEX, table_name='webhook_endpoints', postgresql_concurrently=True)
