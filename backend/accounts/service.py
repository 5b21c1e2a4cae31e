"""Account decisions: sign-up, password login with rate limits, logout, profile changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic

from backend.accounts.emails import (
    PASSWORD_RESET,
    VERIFY_EMAIL,
    AccountEmails,
    password_fingerprint,
)
from backend.accounts.errors import (
    EmailTaken,
    InvalidCredentials,
    InvalidLinkToken,
    InvalidToken,
    PartnerNameLocked,
)
from backend.accounts.models import AccountKind, Partner, PartnerStatus
from backend.accounts.passwords import PasswordHasher
from backend.accounts.repository import AccountRepository, AccountT, DuplicateEmail
from backend.accounts.schemas import PartnerUpdate
from backend.accounts.tokens import AccessClaims, IssuedToken, RevocationList, TokenCodec
from backend.db import utcnow
from backend.errors import RateLimited
from backend.rate_limit import FixedWindowLimiter


@dataclass(frozen=True, slots=True)
class LoginLimits:
    per_ip: FixedWindowLimiter
    # Counted before the password is checked, so a burst of parallel guesses is capped too;
    # a successful login gives its attempt back, so users never lock themselves out.
    per_account: FixedWindowLimiter


class AccountService(Generic[AccountT]):
    def __init__(
        self,
        kind: AccountKind,
        accounts: AccountRepository[AccountT],
        hasher: PasswordHasher,
        tokens: TokenCodec,
        revocations: RevocationList,
        emails: AccountEmails,
    ) -> None:
        self.kind = kind
        self._accounts = accounts
        self._hasher = hasher
        self._tokens = tokens
        self._revocations = revocations
        self._emails = emails

    async def sign_up(self, account: AccountT, password: str) -> AccountT:
        account.password_hash = await self._hasher.hash(password)
        try:
            await self._accounts.add(account)
        except DuplicateEmail:
            raise EmailTaken() from None
        await self._emails.send_verification(self.kind, account)
        return account

    async def verify_email(self, token: str) -> AccountT:
        account_id, claims = self._emails.links.decode(token, VERIFY_EMAIL, self.kind, ["email"])
        account = await self._accounts.get(account_id)
        if account is None or account.email != claims["email"]:
            raise InvalidLinkToken()
        if account.email_verified_at is None:
            account.email_verified_at = utcnow()
            await self._accounts.flush()
        return account

    async def request_password_reset(
        self, email: str, *, client_ip: str, limits: LoginLimits
    ) -> None:
        """Email a reset token if the account exists; the caller learns nothing either way."""
        await limits.per_ip.hit(client_ip)
        account = await self._accounts.get_by_email(email)
        if account is None:
            return
        try:
            await limits.per_account.hit(email)
        except RateLimited:
            return  # enough reset emails for now; saying so would reveal the account exists
        await self._emails.send_password_reset(self.kind, account)

    async def reset_password(self, token: str, new_password: str) -> None:
        """Set the password and invalidate every token the account had."""
        account_id, claims = self._emails.links.decode(token, PASSWORD_RESET, self.kind, ["pwd"])
        # Hashed before the row is locked: the lock is held for a query, not for bcrypt.
        new_hash = await self._hasher.hash(new_password)
        account = await self._accounts.lock(account_id)
        if account is None or claims["pwd"] != password_fingerprint(account.password_hash):
            raise InvalidLinkToken()
        account.password_hash = new_hash
        account.token_version += 1
        account.updated_at = utcnow()
        await self._accounts.flush()

    async def log_in(
        self, email: str, password: str, *, client_ip: str, limits: LoginLimits
    ) -> IssuedToken:
        # Limits are checked before hashing: a flood must not buy CPU time.
        await limits.per_ip.hit(client_ip)
        await limits.per_account.hit(email)
        try:
            account = await self._accounts.get_by_email(email)
            await self._accounts.release_connection()  # not held while the hash waits and runs
        except Exception:
            # The database could not answer (a 503): an attempt nobody could check is not one.
            await limits.per_account.give_back(email)
            await limits.per_ip.give_back(client_ip)
            raise
        password_hash = account.password_hash if account else None
        if not await self._hasher.verify(password, password_hash) or account is None:
            raise InvalidCredentials()
        await limits.per_account.give_back(email)
        return self._tokens.issue(account.id, self.kind, account.token_version)

    async def log_out(self, claims: AccessClaims) -> None:
        await self._revocations.revoke(claims)


async def update_partner(
    partner: Partner, changes: PartnerUpdate, accounts: AccountRepository[Partner]
) -> Partner:
    values = changes.model_dump(exclude_unset=True)
    if "name" in values and values["name"] != partner.name:
        partner = await _lock_for_rename(partner, accounts)
    for field, value in values.items():
        setattr(partner, field, value)
    partner.updated_at = utcnow()
    await accounts.flush()
    return partner


async def _lock_for_rename(partner: Partner, accounts: AccountRepository[Partner]) -> Partner:
    """The partner, locked, if it may still choose its name: only while pending, since after
    approval recipients see that name and only the operator changes it. Locked so that an
    approval running at the same moment cannot let a rename slip in after it."""
    locked = await accounts.lock(partner.id)
    if locked is None:
        raise InvalidToken("The account behind this token no longer exists.")
    if locked.status != PartnerStatus.pending:
        raise PartnerNameLocked()
    return locked
