"""Who is calling: what authentication hands every route that needs an account."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from backend.accounts.api_keys.models import Scope
from backend.accounts.models import AccountKind, Partner, PartnerStatus, Seller
from backend.accounts.tokens import AccessClaims


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What an API key lets its bearer do."""

    key_id: uuid.UUID
    scopes: frozenset[Scope]
    livemode: bool
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the account behind an access token or an API key, loaded and checked.

    Exactly one of `claims` (an access token) and `key` (an API key) is set.
    """

    kind: AccountKind
    account: Seller | Partner
    claims: AccessClaims | None = None
    key: KeyGrant | None = None

    @property
    def account_id(self) -> uuid.UUID:
        return self.account.id

    @property
    def name(self) -> str:
        return self.account.name

    @property
    def livemode(self) -> bool:
        """Whether the caller works on live data: access tokens and live keys do, test keys
        see and create only test data (product.md §11.2)."""
        return self.key is None or self.key.livemode

    @property
    def email_verified(self) -> bool:
        """Whether the address was verified; an unverified seller may create fewer shipments."""
        return self.account.email_verified_at is not None

    @property
    def partner_status(self) -> PartnerStatus | None:
        """A partner's approval status, which decides what it may do with shipments."""
        if isinstance(self.account, Partner):
            return PartnerStatus(self.account.status)
        return None
