"""The transactional outbox: notifications written with the change that causes them."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.db import utcnow

# The lane a row travels in: webhooks (kind "webhook", backend/webhooks/events.py) in theirs,
# every other kind in the emails' lane. Written the same way in the claim and in its index, and
# laid out as PostgreSQL prints it back, so that Alembic's comparison sees no drift.
LANE_OF_ROW = "(\nCASE\n    WHEN kind = 'webhook' THEN 'webhooks'\n    ELSE 'emails'\nEND)"
EMAIL_LANE = "emails"
WEBHOOK_LANE = "webhooks"


class OutboxStatus(enum.StrEnum):
    pending = "pending"
    sent = "sent"
    # Gave up after the configured number of attempts; kept for inspection.
    dead = "dead"


class OutboxMessage(SQLModel, table=True):
    """A notification to send, written in the same transaction as the change behind it.

    Nothing is sent for a change that rolls back, because the message rolls back with it.
    `shiptrack worker` claims due rows with FOR UPDATE SKIP LOCKED and a lease: a worker that
    dies mid-batch only delays its rows until the lease runs out and another worker takes them.
    """

    __tablename__ = "outbox_messages"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'sent', 'dead')", name="status_known"),
        # Deleting a shipment cascades here, and the demo looks a shipment's messages up.
        Index("ix_outbox_messages_shipment_id", "shipment_id"),
        # The retention purge's oldest dead-lettered rows (backend/retention.py).
        Index("ix_outbox_messages_created_at", "created_at"),
        # The retention purge's oldest sent rows.
        Index(
            "ix_outbox_messages_sent_at",
            "sent_at",
            postgresql_where=text("status = 'sent'"),
        ),
        # The worker's claims: pending rows of one lane whose time has come, oldest first. Each
        # lane has its own run of the index, so a claim never steps over the other lane's rows
        # (a backlog of webhooks for slow receivers once cost every email claim a scan of it).
        Index(
            "ix_outbox_messages_lane_due",
            text(LANE_OF_ROW),
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    kind: str = Field(max_length=50)
    shipment_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("shipments.id", ondelete="CASCADE"), nullable=True),
    )
    payload: dict[str, Any] = Field(sa_type=JSONB)
    status: str = Field(
        default=OutboxStatus.pending.value,
        sa_type=String(10),
        sa_column_kwargs={"server_default": OutboxStatus.pending.value},
    )
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    next_attempt_at: datetime = Field(
        default_factory=utcnow,
        sa_type=DateTime(timezone=True),
        sa_column_kwargs={"server_default": text("now()")},
    )
    # While a worker holds the row: who, and until when (then anyone may take it again).
    claimed_by: str | None = Field(default=None, max_length=100)
    claimed_until: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    last_error: str | None = Field(default=None, sa_type=Text)
    sent_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class RecordedEmail(SQLModel, table=True):
    """An email to a test shipment's recipient: recorded instead of sent (product.md §11.2), for
    its seller to read at `GET /test/emails` until `DELETE /test/data` clears it."""

    __tablename__ = "test_emails"
    __table_args__ = (
        # A seller's recorded emails, newest first (keyset on created_at, id).
        Index("ix_test_emails_seller_created", "seller_id", "created_at", "id"),
        Index("ix_test_emails_shipment_id", "shipment_id"),
        # The retention purge's oldest (backend/retention.py).
        Index("ix_test_emails_created_at", "created_at"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    seller_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("sellers.id", ondelete="CASCADE"), nullable=False)
    )
    shipment_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("shipments.id", ondelete="CASCADE"), nullable=False)
    )
    template: str = Field(max_length=50)
    to: str = Field(max_length=254)
    # What the template sees, as an outbox email's payload holds it.
    context: dict[str, Any] = Field(sa_type=JSONB)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
