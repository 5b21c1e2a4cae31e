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


def audience(kind: AccountKind) -> str:
    return f"shiptrack:{kind.value}"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    account_id: uuid.UUID
    kind: AccountKind
    jti: str
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
    """Revoked token ids, each kept exactly as long as the token could still be used."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    @staticmethod
    def _key(jti: str) -> str:
        return f"revoked-jti:{jti}"

    async def revoke(self, claims: AccessClaims) -> None:
        remaining = int((claims.expires_at - datetime.now(UTC)).total_seconds()) + 1
        if remaining > 0:
            await self._redis.set(self._key(claims.jti), "1", ex=remaining)

    async def is_revoked(self, jti: str) -> bool:
        return bool(await self._redis.exists(self._key(jti)))


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
