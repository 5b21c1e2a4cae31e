"""The event feed and webhooks: what happened to a seller's shipments, the endpoints it is
sent to, and the log of every delivery attempt."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Identity, Index, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from backend.db import utcnow

# xid8 has no cast to bigint of its own; its text form is the number.
CURRENT_TRANSACTION_ID = "(pg_current_xact_id()::text)::bigint"


class Event(SQLModel, table=True):
    """Something that happened to a seller's shipment, in the order it happened.

    The same id travels in every webhook delivery of the event (`webhook-id`) and in the feed,
    so a consumer can deduplicate and catch up after an outage.
    """

    __tablename__ = "events"
    __table_args__ = (
        # The feed: a seller's live or test events in (transaction, position) order. The only
        # index on `position`: a global one would tempt the planner, for a seller with many
        # events, to walk everybody's events in order and filter them.
        Index(
            "ix_events_seller_mode_transaction_position",
            "seller_id",
            "livemode",
            "transaction_id",
            "position",
            unique=True,
        ),
        # Deleting a shipment cascades here.
        Index("ix_events_shipment_id", "shipment_id"),
        # The retention purge's oldest events (backend/retention.py).
        Index("ix_events_created_at", "created_at"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    # Commit order is not id order; the feed pages by this instead. Unique per seller (the
    # feed's index); the identity makes it unique overall.
    position: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, Identity(always=True), nullable=False),
    )
    # The transaction that recorded the event (`pg_current_xact_id()`, set by PostgreSQL). The
    # feed lists events in (transaction, position) order, and only those of transactions older
    # than every one still running: a reader can then never pass an event that commits later
    # (WebhookService.feed), and writers need no lock to keep the feed in order.
    transaction_id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, nullable=False, server_default=text(CURRENT_TRANSACTION_ID)),
    )
    seller_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("sellers.id", ondelete="CASCADE"), nullable=False)
    )
    shipment_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("shipments.id", ondelete="CASCADE"), nullable=True),
    )
    type: str = Field(max_length=50)
    data: dict[str, Any] = Field(sa_type=JSONB)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    # False for the events of test data, which only test keys' feeds and endpoints see.
    livemode: bool = Field(default=True, sa_column_kwargs={"server_default": "true"})


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        # A seller registers a URL once per mode (409 `webhook_url_taken`). Over a digest of the
        # URL: a URL of 2000 characters outside ASCII is longer than a B-tree entry may be.
        # Leads with the seller, so it also serves the seller's list and the cascade from
        # `sellers`.
        Index(
            "ix_webhook_endpoints_seller_mode_url",
            "seller_id",
            "livemode",
            text("md5(url)"),
            unique=True,
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    seller_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("sellers.id", ondelete="CASCADE"), nullable=False)
    )
    url: str = Field(max_length=2000)
    description: str | None = Field(default=None, max_length=200)
    # "whsec_" + base64 of 32 random bytes (Standard Webhooks); shown to the seller once.
    secret: str = Field(max_length=100)
    # The secret before the last rotation: deliveries carry a signature with it too until
    # `previous_secret_expires_at`, so receivers can switch secrets without missing one.
    previous_secret: str | None = Field(default=None, max_length=100)
    previous_secret_expires_at: datetime | None = Field(
        default=None, sa_type=DateTime(timezone=True)
    )
    enabled: bool = True
    disabled_reason: str | None = Field(default=None, max_length=500)
    # When the current run of failed deliveries began; cleared by any success.
    failing_since: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    # Registered with a test key: receives the events of test data only, and live endpoints
    # only live events.
    livemode: bool = Field(default=True, sa_column_kwargs={"server_default": "true"})


class WebhookDelivery(SQLModel, table=True):
    """One attempt to deliver one event to one endpoint."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # An endpoint's log, newest first, keyset-paginated on (created_at, id): the id makes
        # the cursor's row comparison one index range, at any depth.
        Index("ix_webhook_deliveries_endpoint_created_id", "endpoint_id", "created_at", "id"),
        # The retention purge's oldest attempts, and the attempts deleted with their event.
        Index("ix_webhook_deliveries_created_at", "created_at"),
        Index("ix_webhook_deliveries_event_id", "event_id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    endpoint_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False)
    )
    event_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("events.id", ondelete="CASCADE"), nullable=False)
    )
    event_type: str = Field(max_length=50)
    attempt: int
    succeeded: bool
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    duration_ms: int
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
