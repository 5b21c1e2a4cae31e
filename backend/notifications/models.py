"""The transactional outbox: notifications written with the change that causes them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, ForeignKey, Index
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.db import utcnow


class OutboxMessage(SQLModel, table=True):
    """A notification to send, written in the same transaction as the change behind it.

    Nothing is sent for a change that rolls back, because the message rolls back with it. The
    worker that delivers these arrives with the notifications issue (product.md §6).
    """

    __tablename__ = "outbox_messages"
    __table_args__ = (Index("ix_outbox_messages_created_at", "created_at"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    kind: str = Field(max_length=50)
    shipment_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("shipments.id", ondelete="CASCADE"), nullable=True),
    )
    payload: dict[str, Any] = Field(sa_type=JSONB)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
