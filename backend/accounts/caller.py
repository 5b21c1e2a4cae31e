"""Who is calling: what authentication hands every route that needs an account."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from backend.accounts.models import AccountKind, Partner, PartnerStatus, Seller
from backend.accounts.tokens import AccessClaims


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the account behind an access token, loaded and checked against it."""

    kind: AccountKind
    account: Seller | Partner
    claims: AccessClaims

    @property
    def account_id(self) -> uuid.UUID:
        return self.account.id

    @property
    def name(self) -> str:
        return self.account.name

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
