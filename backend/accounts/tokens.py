"""Access tokens: PyJWT with a pinned algorithm, and revocation by `jti` in Redis."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from redis.asyncio import Redis

from backend.accounts.errors import InvalidLinkToken, InvalidToken
from backend.accounts.models import AccountKind
from backend.config import Settings

ALGORITHM = "HS256"
TOKEN_TYPE = "at+jwt"  # noqa: S105 - RFC 9068: keeps other JWTs signed with the same key from passing as tokens
REQUIRED_CLAIMS = ["sub", "kind", "aud", "jti", "iat", "exp", "iss", "ver"]
# The headers of every response that carries a credential (a token, a key's secret): never
# stored by a browser or a proxy (RFC 6749 §5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def audience(kind: AccountKind) -> str:
    return f"shiptrack:{kind.value}"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    account_id: uuid.UUID
    kind: AccountKind
    jti: str
    issued_at: datetime
    expires_at: datetime
    # The account's token_version when the token was issued.
    token_version: int


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_in: int


class TokenCodec:
    def __init__(self, settings: Settings) -> None:
        self._key = settings.jwt_secret_key.get_secret_value()
        self._issuer = settings.jwt_issuer
        self._lifetime = timedelta(seconds=settings.access_token_ttl_seconds)
        self._audiences = [audience(kind) for kind in AccountKind]

    @property
    def lifetime_seconds(self) -> int:
        return int(self._lifetime.total_seconds())

    def issue(self, account_id: uuid.UUID, kind: AccountKind, token_version: int) -> IssuedToken:
        now = datetime.now(UTC)
        claims = {
            "sub": str(account_id),
            "kind": kind.value,
            "aud": audience(kind),
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + self._lifetime,
            "iss": self._issuer,
            "ver": token_version,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"typ": TOKEN_TYPE})
        return IssuedToken(token=token, expires_in=int(self._lifetime.total_seconds()))

    def decode(self, token: str) -> AccessClaims:
        try:
            # One parse for the header and the claims (this runs on every authenticated request).
            decoded = jwt.decode_complete(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=self._audiences,
                issuer=self._issuer,
                options={"require": REQUIRED_CLAIMS},
            )
            if decoded["header"].get("typ") != TOKEN_TYPE:
                raise InvalidToken()
            payload = decoded["payload"]
            kind = AccountKind(payload["kind"])
            if payload["aud"] != audience(kind):
                raise InvalidToken()
            return AccessClaims(
                account_id=uuid.UUID(payload["sub"]),
                kind=kind,
                jti=str(payload["jti"]),
                issued_at=datetime.fromtimestamp(payload["iat"], UTC),
                expires_at=datetime.fromtimestamp(payload["exp"], UTC),
                token_version=_whole_number(payload["ver"]),
            )
        except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
            raise InvalidToken() from None


def _whole_number(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidToken()
    return value


class RevocationList:
    """Retired access tokens, each kept exactly as long as the token could still be used: one
    token by its `jti` (logout), or all of an account's tokens before a version (a password
    reset). Both are read in one round trip, so checking costs what checking one did."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    @staticmethod
    def _key(jti: str) -> str:
        return f"revoked-jti:{jti}"

    @staticmethod
    def _version_key(kind: AccountKind, account_id: uuid.UUID) -> str:
        return f"token-version:{kind.value}:{account_id}"

    async def revoke(self, claims: AccessClaims) -> None:
        remaining = int((claims.expires_at - datetime.now(UTC)).total_seconds()) + 1
        if remaining > 0:
            await self._redis.set(self._key(claims.jti), "1", ex=remaining)

    async def retire_earlier_tokens(
        self, kind: AccountKind, account_id: uuid.UUID, token_version: int, lifetime_seconds: int
    ) -> None:
        """From now on, refuse the account's tokens issued before now with a lower version.

        The database refuses them too (the version is in the account's row); this reaches the
        checks that do not read the row, such as an open stream's. Both conditions: a reset
        whose commit then fails retires no login made after it (old version, later time), and
        a replica whose clock runs behind cannot retire a new token (it has the new version).
        Kept as long as a token issued now lives: older tokens have expired by then.
        """
        retired_at = int(datetime.now(UTC).timestamp())
        await self._redis.set(
            self._version_key(kind, account_id),
            f"{token_version} {retired_at}",
            ex=lifetime_seconds + 1,
        )

    async def is_revoked(self, claims: AccessClaims) -> bool:
        revoked, retirement = await self._redis.mget(
            self._key(claims.jti), self._version_key(claims.kind, claims.account_id)
        )
        if revoked is not None:
            return True
        if retirement is None:
            return False
        current_version, retired_at = (int(part) for part in retirement.split())
        return (
            claims.token_version < current_version
            # The same second counts as before: a token issued before the reset must not slip
            # through; one issued just after it carries the new version.
            and claims.issued_at.timestamp() <= retired_at
        )


class LinkTokens:
    """Signed, expiring tokens for links in emails: verifying an address, resetting a password.

    Each purpose has its own audience and token type, so no link token ever passes as an access
    token (or as a link token of another purpose or account kind). Also for recipients' links.
    """

    def __init__(self, settings: Settings) -> None:
        self._key = settings.jwt_secret_key.get_secret_value()
        self._issuer = settings.jwt_issuer

    @staticmethod
    def _audience(purpose: str, scope: str) -> str:
        return f"shiptrack:{purpose}:{scope}"

    def issue(
        self,
        purpose: str,
        scope: str,
        subject: uuid.UUID,
        lifetime: timedelta,
        **claims: str,
    ) -> str:
        now = datetime.now(UTC)
        payload = {
            "sub": str(subject),
            "aud": self._audience(purpose, scope),
            "iat": now,
            "exp": now + lifetime,
            "iss": self._issuer,
            **claims,
        }
        return jwt.encode(
            payload, self._key, algorithm=ALGORITHM, headers={"typ": f"{purpose}+jwt"}
        )

    def decode(
        self, token: str, purpose: str, scope: str, required: list[str]
    ) -> tuple[uuid.UUID, dict[str, str]]:
        """(subject id, the purpose's own claims), or `InvalidLinkToken`.

        `scope` narrows the audience further: the account kind, or "shipment".
        """
        try:
            if jwt.get_unverified_header(token).get("typ") != f"{purpose}+jwt":
                raise InvalidLinkToken()
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=self._audience(purpose, scope),
                issuer=self._issuer,
                options={"require": ["sub", "aud", "iat", "exp", "iss", *required]},
            )
            return uuid.UUID(payload["sub"]), {name: str(payload[name]) for name in required}
        except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
            raise InvalidLinkToken() from None
