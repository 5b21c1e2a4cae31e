"""Shipments, their timeline, tags and idempotency records.

Only the timeline loads by itself (`lazy="selectin"`: one query for the timelines of every
shipment a query returns); every other relationship raises if touched without being loaded
explicitly, so no query hides in a loop. backend/shipments/repository.py loads them, and
backend/shipments/views.py builds the API's views from them.
"""

# No `from __future__ import annotations`: SQLModel resolves relationship types at runtime.

import uuid
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
    and_,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import foreign
from sqlmodel import Field, Relationship, SQLModel, col

from backend.accounts.models import Partner
from backend.db import utcnow
from backend.shipments.failures import FailureReason
from backend.shipments.status import ShipmentStatus

# How many of the newest events public tracking shows (with the total count).
PUBLIC_TIMELINE_LENGTH = 50

_STATUS_VALUES = ", ".join(f"'{status.value}'" for status in ShipmentStatus)
_REASON_VALUES = ", ".join(f"'{reason.value}'" for reason in FailureReason)


class StatusColumn(TypeDecorator[ShipmentStatus]):
    """A status stored as VARCHAR (checked by a constraint) and read back as the enum."""

    impl = String(20)
    cache_ok = True

    def process_bind_param(self, value: ShipmentStatus | None, dialect: Dialect) -> str | None:
        return None if value is None else ShipmentStatus(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> ShipmentStatus | None:
        return None if value is None else ShipmentStatus(value)


# A link's copy of its shipment's keyset-pagination key.
_KEY = ("created_at", "shipment_id")


class ShipmentTag(SQLModel, table=True):
    """A shipment's tag, with copies of the shipment's owners and creation time.

    The copies let one index serve a tag-filtered page of one owner, newest first: the page
    walks (seller_id | partner_id, tag_id, created_at, shipment_id) instead of every shipment of
    the owner probing its tags. They are written with the link, from the shipment's row, by the
    one statement that inserts links (ShipmentRepository.add_tags); links are only ever replaced
    under the shipment's row lock. `seller_id` and `created_at` never change; anything that
    moves a shipment to another partner must update `partner_id` here in the same transaction.
    """

    __tablename__ = "shipment_tags"
    __table_args__ = (
        Index("ix_shipment_tags_seller_mode_tag_created", "seller_id", "livemode", "tag_id", *_KEY),
        Index("ix_shipment_tags_partner_tag_created", "partner_id", "tag_id", *_KEY),
    )

    shipment_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("shipments.id", ondelete="CASCADE"), primary_key=True)
    )
    tag_id: int = Field(
        sa_column=Column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    )
    # Copies of the shipment's columns (no foreign keys: the shipment's own are the checks).
    seller_id: uuid.UUID
    partner_id: uuid.UUID
    created_at: datetime = Field(sa_type=DateTime(timezone=True))
    livemode: bool = Field(default=True, sa_column_kwargs={"server_default": "true"})


class Tag(SQLModel, table=True):
    __tablename__ = "tags"

    id: int | None = Field(default=None, primary_key=True)
    # Stored lower-case; the unique constraint makes concurrent first uses of a tag safe.
    name: str = Field(max_length=40, unique=True)


class ShipmentEvent(SQLModel, table=True):
    """One accepted change, in the order it was recorded: sequence 1, 2, 3... with no gap, per
    shipment. `occurred_at` is when it happened, as the partner says (a scan uploaded late
    happened before it was recorded); timelines are shown in that order (product.md §12.2)."""

    __tablename__ = "shipment_events"
    __table_args__ = (
        UniqueConstraint("shipment_id", "sequence", name="uq_shipment_events_sequence"),
        # A partner's retried scan names the event it recorded (POST /scans).
        Index(
            "uq_shipment_events_scan_id",
            "shipment_id",
            "scan_id",
            unique=True,
            postgresql_where=text("scan_id IS NOT NULL"),
        ),
        CheckConstraint("location_lat BETWEEN -90 AND 90", name="location_lat_range"),
        CheckConstraint("location_lon BETWEEN -180 AND 180", name="location_lon_range"),
        CheckConstraint(f"failure_reason IN ({_REASON_VALUES})", name="failure_reason_known"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    shipment_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("shipments.id", ondelete="CASCADE"), nullable=False)
    )
    sequence: int = Field(ge=1)
    status: ShipmentStatus = Field(sa_type=StatusColumn)
    location_zip: str | None = Field(default=None, max_length=20)
    location_city: str | None = Field(default=None, max_length=100)
    location_lat: float | None = Field(default=None, sa_type=Float)
    location_lon: float | None = Field(default=None, sa_type=Float)
    # Public words: the status's, the partner's note, or a failed attempt's reason in words.
    description: str | None = Field(default=None, max_length=500)
    # A failed delivery attempt's reason, and the partner's note on it, which only the seller
    # and the partner see: it may name people or places at the door.
    failure_reason: str | None = Field(default=None, max_length=30)  # a FailureReason
    note: str | None = Field(default=None, max_length=500)
    # The partner's id for the scan that recorded this event (POST /scans), if any.
    scan_id: str | None = Field(default=None, max_length=100)
    # The server default dates the events of a server still running the code before this
    # column (during a rolling deploy) when they were recorded, which is when they happened.
    occurred_at: datetime = Field(
        default_factory=utcnow,
        sa_type=DateTime(timezone=True),
        sa_column_kwargs={"server_default": text("now()")},
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    # Its shipment's: false for test data (product.md §11.2).
    livemode: bool = Field(default=True, sa_column_kwargs={"server_default": "true"})


class Shipment(SQLModel, table=True):
    __tablename__ = "shipments"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_VALUES})", name="status_known"),
        CheckConstraint("weight_kg > 0 AND weight_kg <= 100", name="weight_range"),
        CheckConstraint("delivery_code_attempts >= 0", name="attempts_not_negative"),
        CheckConstraint("delivery_attempts >= 0", name="delivery_attempts_not_negative"),
        # Newest-first pages per owner and per partner (keyset on created_at, id). A seller's
        # live and test shipments are two ranges of its index (`livemode`, product.md §11.2);
        # a partner's are all live (test shipments go to simulated partners only).
        Index("ix_shipments_seller_mode_created", "seller_id", "livemode", "created_at", "id"),
        Index("ix_shipments_partner_created", "partner_id", "created_at", "id"),
        # The same pages filtered by status: one range of the index, whatever the status's share.
        Index(
            "ix_shipments_seller_mode_status_created",
            "seller_id",
            "livemode",
            "status",
            "created_at",
            "id",
        ),
        Index("ix_shipments_partner_status_created", "partner_id", "status", "created_at", "id"),
        # A seller's shipments by its own reference (an order number), newest first.
        Index(
            "ix_shipments_seller_mode_reference_created",
            "seller_id",
            "livemode",
            "reference",
            "created_at",
            "id",
        ),
        # The expiry sweep's oldest still-placed shipments (backend/shipments/expiry.py); its
        # query spells 'placed' as a literal, so even a generic plan can prove the predicate.
        Index(
            "ix_shipments_placed_created",
            "created_at",
            postgresql_where=text("status = 'placed'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    tracking_number: str = Field(max_length=20, unique=True)
    seller_id: uuid.UUID = Field(foreign_key="sellers.id")
    partner_id: uuid.UUID = Field(foreign_key="partners.id")
    status: ShipmentStatus = Field(default=ShipmentStatus.placed, sa_type=StatusColumn)
    content: str = Field(max_length=200)
    weight_kg: float = Field(sa_type=Float)
    destination_zip: str = Field(max_length=20)
    destination_address_line: str | None = Field(default=None, max_length=300)
    destination_city: str | None = Field(default=None, max_length=100)
    recipient_name: str = Field(max_length=100)
    recipient_email: str = Field(max_length=254)
    recipient_phone: str | None = Field(default=None, max_length=30)
    reference: str | None = Field(default=None, max_length=100)
    estimated_delivery: datetime = Field(sa_type=DateTime(timezone=True))
    version: int = Field(default=1, sa_type=Integer)
    # The sequence of the newest timeline event; the next event gets this + 1.
    last_sequence: int = Field(default=0, sa_type=Integer)
    # The recipient's delivery code: only a keyed hash is stored, and only while usable.
    delivery_code_hash: str | None = Field(default=None, max_length=64)
    delivery_code_expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    delivery_code_attempts: int = Field(default=0, sa_type=Integer)
    # Wrong codes across every code the shipment was issued: re-issuing one must not reset the
    # budget a guesser has for the parcel.
    delivery_code_failures: int = Field(
        default=0, sa_type=Integer, sa_column_kwargs={"server_default": "0"}
    )
    # Failed delivery attempts so far; MAX_DELIVERY_ATTEMPTS of them return the shipment.
    delivery_attempts: int = Field(
        default=0, sa_type=Integer, sa_column_kwargs={"server_default": "0"}
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    # False for a test shipment: created with a test key, carried by the seller's simulated
    # partner, seen only with test keys (product.md §11.2).
    livemode: bool = Field(default=True, sa_column_kwargs={"server_default": "true"})

    timeline: list[ShipmentEvent] = Relationship(
        sa_relationship_kwargs={
            "lazy": "selectin",
            # When it happened; events that happened at the same moment in recording order.
            "order_by": "[ShipmentEvent.occurred_at, ShipmentEvent.sequence]",
            "cascade": "all, delete-orphan",
        }
    )
    # The newest events only, for public views: a timeline may hold MAX_EVENTS_PER_SHIPMENT
    # events, and an anonymous read should not carry them all. Sequences are gapless, so the
    # newest N recorded are those above `last_sequence - N`, and `last_sequence` is the total.
    recent_timeline: list[ShipmentEvent] = Relationship(
        sa_relationship_kwargs={
            "lazy": "raise",
            "viewonly": True,
            "order_by": "[ShipmentEvent.occurred_at, ShipmentEvent.sequence]",
            "primaryjoin": lambda: and_(
                foreign(col(ShipmentEvent.shipment_id)) == col(Shipment.id),
                col(ShipmentEvent.sequence) > col(Shipment.last_sequence) - PUBLIC_TIMELINE_LENGTH,
            ),
        }
    )
    # The newest event alone: when it was reached, for a list that leaves the timeline out.
    last_event: ShipmentEvent | None = Relationship(
        sa_relationship_kwargs={
            "lazy": "raise",
            "viewonly": True,
            "uselist": False,
            "primaryjoin": lambda: and_(
                foreign(col(ShipmentEvent.shipment_id)) == col(Shipment.id),
                col(ShipmentEvent.sequence) == col(Shipment.last_sequence),
            ),
        }
    )
    tags: list[Tag] = Relationship(link_model=ShipmentTag, sa_relationship_kwargs={"lazy": "raise"})
    review: Optional["Review"] = Relationship(
        sa_relationship_kwargs={"lazy": "raise", "uselist": False}
    )
    partner: Partner = Relationship(sa_relationship_kwargs={"lazy": "raise"})


class IdempotencyRecord(SQLModel, table=True):
    """The first response to a seller's `Idempotency-Key`, replayed to every retry."""

    __tablename__ = "idempotency_keys"
    # The retention purge's oldest keys (backend/retention.py).
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    seller_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("sellers.id", ondelete="CASCADE"), primary_key=True)
    )
    # The client's key. A test key's are stored as "test <key>": a client's key has no space
    # (the header's pattern), so the same key sent in test and in live mode names two requests,
    # and no live key can ever name a test one.
    key: str = Field(max_length=300, primary_key=True)
    # SHA-256 of the canonical request body: a retry must send the same body.
    request_fingerprint: str = Field(max_length=64)
    # Deleted with its shipment: clearing test data may delete shipments whose keys a create
    # committed a moment before.
    shipment_id: uuid.UUID | None = Field(
        default=None, foreign_key="shipments.id", ondelete="CASCADE", index=True
    )
    response_status: int | None = None
    response_body: dict[str, Any] | None = Field(default=None, sa_type=JSONB)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class Review(SQLModel, table=True):
    """The recipient's rating of a delivered shipment: one per shipment."""

    __tablename__ = "reviews"
    __table_args__ = (CheckConstraint("rating BETWEEN 1 AND 5", name="rating_range"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    shipment_id: uuid.UUID = Field(
        sa_column=Column(
            ForeignKey("shipments.id", ondelete="CASCADE"), nullable=False, unique=True
        )
    )
    rating: int
    comment: str | None = Field(default=None, max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
