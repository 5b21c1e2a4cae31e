"""The account emails: verifying the address after sign-up, and resetting a password."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from backend.accounts.models import AccountKind, Partner, Seller
from backend.accounts.tokens import LinkTokens
from backend.db import utcnow
from backend.errors import RateLimited
from backend.outbox.outbox import enqueue_email
from backend.outbox.wording import human_moment
from backend.rate_limit import FixedWindowLimiter

VERIFY_EMAIL = "verify-email"
PASSWORD_RESET = "password-reset"  # noqa: S105 - a token purpose, not a secret


def password_fingerprint(password_hash: str) -> str:
    """Changes with the password, so a reset link works once: after use it no longer matches."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class DailyEmailCaps:
    """How many of each account email one account may be sent per day, so that nobody can
    flood an inbox through the API."""

    verifications: FixedWindowLimiter
    resets: FixedWindowLimiter


def _account_subject(kind: AccountKind, account: Seller | Partner) -> str:
    return f"{kind.value}:{account.id}"


@dataclass(frozen=True, slots=True)
class AccountEmails:
    session: AsyncSession
    links: LinkTokens
    public_base_url: str
    verification_lifetime: timedelta
    reset_lifetime: timedelta
    caps: DailyEmailCaps

    async def send_verification(self, kind: AccountKind, account: Seller | Partner) -> None:
        """Queue the email; `RateLimited` (and nothing queued) beyond the daily cap."""
        await self.caps.verifications.hit(_account_subject(kind, account))
        token = self.links.issue(
            VERIFY_EMAIL, kind, account.id, self.verification_lifetime, email=account.email
        )
        enqueue_email(
            self.session,
            "verify_email",
            account.email,
            name=account.name,
            verify_url=f"{self._base}/{kind.value}/verify?token={token}",
            expires_at_text=human_moment(utcnow() + self.verification_lifetime),
        )

    async def send_password_reset(self, kind: AccountKind, account: Seller | Partner) -> None:
        """Queue the email, or beyond the daily cap nothing, silently: whoever asked must not
        learn from the answer that the account exists."""
        try:
            await self.caps.resets.hit(_account_subject(kind, account))
        except RateLimited:
            return
        token = self.links.issue(
            PASSWORD_RESET,
            kind,
            account.id,
            self.reset_lifetime,
            pwd=password_fingerprint(account.password_hash),
        )
        enqueue_email(
            self.session,
            "password_reset",
            account.email,
            name=account.name,
            reset_token=token,
            reset_url=f"{self._base}/{kind.value}/password/reset",
            # Whoever can read the outbox must not be able to reset the password with it.
            secret_fields=("reset_token",),
            reference_url=f"{self._base}/scalar",
            expires_at_text=human_moment(utcnow() + self.reset_lifetime),
        )

    @property
    def _base(self) -> str:
        return self.public_base_url.rstrip("/")


def send_partner_approved(session: AsyncSession, partner: Partner, public_base_url: str) -> None:
    """Tell a partner it may now receive shipments; queued in the approval's transaction."""
    base = public_base_url.rstrip("/")
    enqueue_email(
        session,
        "partner_approved",
        partner.email,
        name=partner.name,
        zip_codes=", ".join(partner.serviceable_zip_codes),
        capacity=partner.max_handling_capacity,
        token_url=f"{base}/partner/token",
        shipments_url=f"{base}/shipments",
        reference_url=f"{base}/scalar",
    )
