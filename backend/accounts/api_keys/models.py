"""The stored key: who it belongs to, what it may do, and the digest that proves it."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import ARRAY, CheckConstraint, Column, DateTime, ForeignKey, Index, LargeBinary
from sqlalchemy import String as SqlString
from sqlmodel import Field, SQLModel

from backend.accounts.models import AccountKind
from backend.db import utcnow


class KeyMode(enum.StrEnum):
    """`live` keys see and change live data; `test` keys only test data (product.md §11.2)."""

    live = "live"
    test = "test"


class Scope(enum.StrEnum):
    """What a key may do. Each route that takes keys needs exactly one scope; a key without it
    gets 403 `insufficient_scope`."""

    shipments_read = "shipments:read"
    shipments_write = "shipments:write"
    webhooks = "webhooks"
    events_read = "events:read"


SCOPES_OF_KIND: dict[AccountKind, frozenset[Scope]] = {
    AccountKind.seller: frozenset(Scope),
    AccountKind.partner: frozenset({Scope.shipments_read, Scope.shipments_write}),
}
MAX_KEYS_PER_ACCOUNT = 20

_SCOPE_VALUES = ", ".join(f"'{scope.value}'" for scope in Scope)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"
    __table_args__ = (
        # Exactly one owner, of the kind the key says.
        CheckConstraint(
            "(account_kind = 'seller' AND seller_id IS NOT NULL AND partner_id IS NULL)"
            " OR (account_kind = 'partner' AND partner_id IS NOT NULL AND seller_id IS NULL)",
            name="one_owner",
        ),
        CheckConstraint(f"scopes <@ ARRAY[{_SCOPE_VALUES}]::varchar[]", name="scopes_known"),
        CheckConstraint("octet_length(digest) = 32", name="digest_sha256"),
        # Every authenticated request with a key finds its row by the prefix.
        Index("ix_api_keys_prefix", "prefix"),
        Index("ix_api_keys_seller_id", "seller_id"),
        Index("ix_api_keys_partner_id", "partner_id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    account_kind: AccountKind = Field(sa_type=SqlString(10))
    seller_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("sellers.id", ondelete="CASCADE"), nullable=True),
    )
    partner_id: uuid.UUID | None = Field(
        default=None,
        sa_column=Column(ForeignKey("partners.id", ondelete="CASCADE"), nullable=True),
    )
    name: str = Field(max_length=100)
    # `st_live_` or `st_test_` and the first characters of the secret: found by it, shown in
    # lists. Not unique: two keys may share one, and the digest tells them apart.
    prefix: str = Field(max_length=20)
    # SHA-256 of the whole secret; the secret itself is never stored.
    digest: bytes = Field(sa_type=LargeBinary)
    scopes: list[str] = Field(sa_type=ARRAY(SqlString(30)))
    livemode: bool
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # Updated at most once a minute, after the request that used the key (usage.py).
    last_used_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))

    @property
    def account_id(self) -> uuid.UUID:
        owner = self.seller_id if self.account_kind == AccountKind.seller else self.partner_id
        assert owner is not None  # the `one_owner` constraint
        return owner
