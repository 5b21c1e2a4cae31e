"""Partner approval: the operator's decisions on partner accounts (product.md §4).

A partner signs up `pending` and gets no shipments until the operator approves it; a
`suspended` partner keeps the shipments it already carries (its seller still sees them) but can
neither see nor report them, and gets no new ones. The operator works from the CLI
(`shiptrack partners ...`, backend/cli.py); these functions are what it calls, each in one unit
of work with the partner's row locked, so an approval and the partner's own profile change
never interleave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from backend.accounts.emails import send_partner_approved
from backend.accounts.errors import PartnerNotFound
from backend.accounts.models import Partner, PartnerStatus
from backend.accounts.repository import AccountRepository, list_partners
from backend.config import PartnerApproval
from backend.db import UnitOfWork, utcnow
from backend.fields import reject_unstorable

# Shown to the partner on GET /partner/me; the column holds 500 characters.
SuspensionReason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
    AfterValidator(reject_unstorable),
]


def admit(partner: Partner, approval: PartnerApproval) -> Partner:
    """The status a new partner starts with: pending, unless approval is automatic."""
    if approval == "auto":
        partner.status = PartnerStatus.approved
        partner.approved_at = utcnow()
    else:
        partner.status = PartnerStatus.pending
    return partner


@dataclass(frozen=True, slots=True)
class PartnerChange:
    partner: Partner
    # False when the partner already was as asked (approving an approved partner): nothing
    # was written and no email was sent.
    changed: bool


class PartnerAdministration:
    """The operator's view of partners, in one unit of work."""

    def __init__(self, unit: UnitOfWork, public_base_url: str) -> None:
        self._session = unit.session
        self._accounts = AccountRepository(unit, Partner)
        self._public_base_url = public_base_url

    async def list(self, status: PartnerStatus | None, limit: int) -> Sequence[Partner]:
        return await list_partners(self._session, status, limit)

    async def approve(self, email: str) -> PartnerChange:
        """Approve a pending partner, or reinstate a suspended one; the partner is emailed."""
        partner = await self._locked(email)
        if partner.status == PartnerStatus.approved:
            return PartnerChange(partner, changed=False)
        partner.status = PartnerStatus.approved
        partner.approved_at = partner.updated_at = utcnow()
        partner.suspended_at = partner.suspended_reason = None
        await self._accounts.flush()
        send_partner_approved(self._session, partner, self._public_base_url)
        return PartnerChange(partner, changed=True)

    async def suspend(self, email: str, reason: str) -> PartnerChange:
        """Take away the partner's access to shipments and stop new assignments.

        Its active shipments stay assigned to it, so that their sellers keep seeing who holds
        each parcel; nothing is reassigned behind the operator's back.
        """
        partner = await self._locked(email)
        if partner.status == PartnerStatus.suspended and partner.suspended_reason == reason:
            return PartnerChange(partner, changed=False)
        partner.status = PartnerStatus.suspended
        partner.suspended_at = partner.updated_at = utcnow()
        partner.suspended_reason = reason
        await self._accounts.flush()
        return PartnerChange(partner, changed=True)

    async def rename(self, email: str, name: str) -> PartnerChange:
        """Change the name recipients see, whatever the partner's status."""
        partner = await self._locked(email)
        if partner.name == name:
            return PartnerChange(partner, changed=False)
        partner.name = name
        partner.updated_at = utcnow()
        await self._accounts.flush()
        return PartnerChange(partner, changed=True)

    async def _locked(self, email: str) -> Partner:
        partner = await self._accounts.lock_by_email(email)
        if partner is None:
            raise PartnerNotFound(f"No partner account has the email address {email!r}.")
        return partner
