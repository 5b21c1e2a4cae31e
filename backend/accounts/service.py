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
    EmailAlreadyVerified,
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
from backend.rate_limit import FixedWindowLimiter


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """Counted before the password is checked, so a burst of parallel guesses is capped too; a
    successful login gives its attempt back, so users never lock themselves out."""

    per_ip: FixedWindowLimiter
    # One account from one address: where a guesser is stopped...
    per_account_and_ip: FixedWindowLimiter
    # ...and one account from every address together, a higher cap: guesses from elsewhere lock
    # the owner, logging in from their own address, out only beyond it.
    per_account: FixedWindowLimiter

    async def count(self, email: str, client_ip: str) -> None:
        """One attempt; `RateLimited` once a budget is spent. An attempt refused by a cap is
        not counted by the caps after it, so one address adds at most its own cap to the
        account's."""
        await self.per_ip.hit(client_ip)
        await self.per_account_and_ip.hit(_account_and_ip(email, client_ip))
        await self.per_account.hit(email)

    async def give_back(self, email: str, client_ip: str, *, ip_too: bool) -> None:
        await self.per_account.give_back(email)
        await self.per_account_and_ip.give_back(_account_and_ip(email, client_ip))
        if ip_too:
            await self.per_ip.give_back(client_ip)


def _account_and_ip(email: str, client_ip: str) -> str:
    return f"{email}\n{client_ip}"  # neither an email nor an address contains a newline


@dataclass(frozen=True, slots=True)
class LinkLimits:
    """For the password and verification links: per client address, checked first, then per
    account once a signed token has named one."""

    per_ip: FixedWindowLimiter
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

    async def resend_verification(self, account: AccountT) -> None:
        """Another verification email; `RateLimited` beyond the daily cap."""
        if account.email_verified_at is not None:
            raise EmailAlreadyVerified()
        await self._emails.send_verification(self.kind, account)

    async def verify_email(self, token: str, *, client_ip: str, limits: LinkLimits) -> AccountT:
        await limits.per_ip.hit(client_ip)
        account_id, claims = self._emails.links.decode(token, VERIFY_EMAIL, self.kind, ["email"])
        await limits.per_account.hit(str(account_id))
        account = await self._accounts.get(account_id)
        if account is None or account.email != claims["email"]:
            raise InvalidLinkToken()
        if account.email_verified_at is None:
            account.email_verified_at = utcnow()
            await self._accounts.flush()
        return account

    async def request_password_reset(
        self, email: str, *, client_ip: str, per_ip: FixedWindowLimiter
    ) -> None:
        """Email a reset token if the account exists; the caller learns nothing either way,
        not even when the account's daily cap of reset emails holds this one back."""
        await per_ip.hit(client_ip)
        account = await self._accounts.get_by_email(email)
        if account is not None:
            await self._emails.send_password_reset(self.kind, account)

    async def reset_password(
        self, token: str, new_password: str, *, client_ip: str, limits: LinkLimits
    ) -> None:
        """Set the password and retire every token the account had.

        Every check that can refuse runs before the hash: a replayed, forged or rate-limited
        token costs no bcrypt time. The hash runs with no row locked and no connection held;
        the token is checked again under the lock, so of simultaneous uses one wins.
        """
        await limits.per_ip.hit(client_ip)
        account_id, claims = self._emails.links.decode(token, PASSWORD_RESET, self.kind, ["pwd"])
        await limits.per_account.hit(str(account_id))
        self._still_unused(await self._accounts.get(account_id), claims)
        await self._accounts.release_connection()
        new_hash = await self._hasher.hash(new_password)
        account = self._still_unused(await self._accounts.lock(account_id), claims)
        account.password_hash = new_hash
        account.token_version += 1
        account.updated_at = utcnow()
        await self._accounts.flush()
        # Open streams check Redis, not the database, for retired tokens. Before the commit:
        # if Redis cannot take it the reset fails (503) rather than leave streams running.
        await self._revocations.retire_earlier_tokens(
            self.kind, account.id, account.token_version, self._tokens.lifetime_seconds
        )

    @staticmethod
    def _still_unused(account: AccountT | None, claims: dict[str, str]) -> AccountT:
        """The account, if the reset token was made for its current password."""
        if account is None or claims["pwd"] != password_fingerprint(account.password_hash):
            raise InvalidLinkToken()
        return account

    async def log_in(
        self, email: str, password: str, *, client_ip: str, limits: LoginLimits
    ) -> IssuedToken:
        # Limits are checked before hashing: a flood must not buy CPU time.
        await limits.count(email, client_ip)
        try:
            account = await self._accounts.get_by_email(email)
            await self._accounts.release_connection()  # not held while the hash waits and runs
            password_hash = account.password_hash if account else None
            verified = await self._hasher.verify(password, password_hash)
        except Exception:
            # The database could not answer or the hashing queue was full (a 503): an attempt
            # nobody could check is not one.
            await limits.give_back(email, client_ip, ip_too=True)
            raise
        if not verified or account is None:
            raise InvalidCredentials()
        await limits.give_back(email, client_ip, ip_too=False)
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
