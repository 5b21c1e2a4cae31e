"""Account decisions: sign-up, password login with rate limits, logout, profile changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic

from backend.accounts.errors import EmailTaken, InvalidCredentials
from backend.accounts.models import AccountKind, Partner
from backend.accounts.passwords import PasswordHasher
from backend.accounts.repository import AccountRepository, AccountT, DuplicateEmail
from backend.accounts.schemas import PartnerUpdate
from backend.accounts.tokens import AccessClaims, IssuedToken, RevocationList, TokenCodec
from backend.db import utcnow
from backend.rate_limit import FixedWindowLimiter


@dataclass(frozen=True, slots=True)
class LoginLimits:
    per_ip: FixedWindowLimiter
    # Counts wrong passwords only: a user's own successful logins never lock them out.
    failures_per_account: FixedWindowLimiter


class AccountService(Generic[AccountT]):
    def __init__(
        self,
        kind: AccountKind,
        accounts: AccountRepository[AccountT],
        hasher: PasswordHasher,
        tokens: TokenCodec,
        revocations: RevocationList,
    ) -> None:
        self.kind = kind
        self._accounts = accounts
        self._hasher = hasher
        self._tokens = tokens
        self._revocations = revocations

    async def sign_up(self, account: AccountT, password: str) -> AccountT:
        account.password_hash = await self._hasher.hash(password)
        try:
            return await self._accounts.add(account)
        except DuplicateEmail:
            raise EmailTaken() from None

    async def log_in(
        self, email: str, password: str, *, client_ip: str, limits: LoginLimits
    ) -> IssuedToken:
        # Limits are checked before hashing: a flood must not buy CPU time.
        await limits.per_ip.hit(client_ip)
        await limits.failures_per_account.check(email)
        account = await self._accounts.get_by_email(email)
        password_hash = account.password_hash if account else None
        if not await self._hasher.verify(password, password_hash) or account is None:
            await limits.failures_per_account.hit(email)
            raise InvalidCredentials()
        return self._tokens.issue(account.id, self.kind)

    async def log_out(self, claims: AccessClaims) -> None:
        await self._revocations.revoke(claims)


async def update_partner(
    partner: Partner, changes: PartnerUpdate, accounts: AccountRepository[Partner]
) -> Partner:
    for field, value in changes.model_dump(exclude_unset=True).items():
        setattr(partner, field, value)
    partner.updated_at = utcnow()
    await accounts.flush()
    return partner
