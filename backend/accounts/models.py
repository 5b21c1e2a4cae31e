"""Seller and partner accounts. Neither has relationships that load on their own."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import ARRAY, CheckConstraint, Column, DateTime, ForeignKey, Index, String
from sqlmodel import Field, SQLModel

from backend.db import utcnow


class AccountKind(enum.StrEnum):
    seller = "seller"
    partner = "partner"


class PartnerStatus(enum.StrEnum):
    """Only `approved` partners are assigned shipments and see them (product.md §4)."""

    pending = "pending"
    approved = "approved"
    suspended = "suspended"
    # A seller's built-in partner for test shipments (product.md §11.2): never assigned live
    # shipments, never logs in, moved along only by `POST /test/shipments/{id}/advance`.
    simulated = "simulated"


_PARTNER_STATUS_VALUES = ", ".join(f"'{status.value}'" for status in PartnerStatus)


class Seller(SQLModel, table=True):
    __tablename__ = "sellers"
    __table_args__ = (CheckConstraint("email = lower(email)", name="email_lowercase"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=100)
    # Stored lower-cased, so the unique constraint is case-insensitive.
    email: str = Field(max_length=254, unique=True)
    password_hash: str = Field(max_length=100)
    zip_code: str = Field(max_length=20)
    address: str | None = Field(default=None, max_length=300)
    email_verified_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # Shipments created while the email was unverified, capped by
    # UNVERIFIED_SELLER_SHIPMENT_LIMIT; counted in this row so one conditional UPDATE settles
    # concurrent creates. Verified sellers' creates do not touch it.
    unverified_shipments: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # In every access token; raising it (a password reset) invalidates every token issued before.
    token_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class Partner(SQLModel, table=True):
    __tablename__ = "partners"
    __table_args__ = (
        CheckConstraint("email = lower(email)", name="email_lowercase"),
        CheckConstraint(f"status IN ({_PARTNER_STATUS_VALUES})", name="status_known"),
        CheckConstraint("max_handling_capacity >= 1", name="capacity_positive"),
        CheckConstraint("active_shipments >= 0", name="active_not_negative"),
        # Assignment looks partners up by destination zip, spelled for this index:
        # `serviceable_zip_codes @> ARRAY[zip]` (`zip = ANY(...)` cannot use it).
        Index("ix_partners_serviceable_zip_codes", "serviceable_zip_codes", postgresql_using="gin"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=100)
    email: str = Field(max_length=254, unique=True)
    password_hash: str = Field(max_length=100)
    serviceable_zip_codes: list[str] = Field(sa_type=ARRAY(String(20)))
    max_handling_capacity: int
    # Non-terminal shipments assigned to this partner. Kept in the row so that assignment can
    # lock one partner and compare two columns, instead of counting shipments under a lock.
    active_shipments: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Set by the operator (`shiptrack partners ...`), never by the partner. A row inserted
    # without one is pending: it fails safe.
    status: PartnerStatus = Field(
        default=PartnerStatus.pending,
        sa_type=String(20),
        sa_column_kwargs={"server_default": PartnerStatus.pending.value},
    )
    approved_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    suspended_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # Why the operator suspended the partner; shown to the partner on GET /partner/me.
    suspended_reason: str | None = Field(default=None, max_length=500)
    # The seller whose simulated partner this is (status `simulated`); null for real ones.
    simulates_for_seller_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("sellers.id", ondelete="CASCADE"), nullable=True, unique=True),
    )
    email_verified_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # In every access token; raising it (a password reset) invalidates every token issued before.
    token_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
