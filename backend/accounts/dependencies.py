"""Dependencies that authenticate a request and hand handlers the loaded account."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request

from backend.accounts.emails import AccountEmails, DailyEmailCaps
from backend.accounts.errors import InvalidToken, WrongAccountKind
from backend.accounts.models import AccountKind, Caller, Partner, PartnerStatus, Seller
from backend.accounts.passwords import PasswordHasher
from backend.accounts.repository import AccountRepository, AccountT, caller_row
from backend.accounts.service import AccountService, LinkLimits, LoginLimits
from backend.accounts.tokens import AccessClaims, LinkTokens, RevocationList, TokenCodec
from backend.auth_schemes import PARTNER_AUTH, SELLER_AUTH, requires_auth
from backend.config import Settings
from backend.db import Database, DatabaseDep
from backend.errors import Unauthorized
from backend.rate_limit import FixedWindowLimiter
from backend.redis_client import RedisDep

DAY = 24 * 3600


# Every dependency here is `async def`, even when it awaits nothing: FastAPI runs plain `def`
# dependencies on a worker thread, and a thread hop per dependency per request is measurable.
async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_token_codec(request: Request) -> TokenCodec:
    codec: TokenCodec = request.app.state.token_codec
    return codec


async def get_password_hasher(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.app.state.password_hasher
    return hasher


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
TokenCodecDep = Annotated[TokenCodec, Depends(get_token_codec)]
PasswordHasherDep = Annotated[PasswordHasher, Depends(get_password_hasher)]


async def get_revocations(redis: RedisDep) -> RevocationList:
    return RevocationList(redis)


RevocationsDep = Annotated[RevocationList, Depends(get_revocations)]


def _bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    return token.strip()


async def get_access_claims(request: Request) -> AccessClaims:
    # The codec and Redis come straight from the app state rather than as sub-dependencies:
    # this runs on every authenticated request, and each dependency FastAPI resolves costs.
    codec: TokenCodec = request.app.state.token_codec
    claims = codec.decode(_bearer_token(request))
    # Fails closed: if Redis cannot answer, the request gets a 503, never a pass.
    if await RevocationList(request.app.state.redis).is_revoked(claims):
        raise InvalidToken("This token has been revoked.")
    return claims


AccessClaimsDep = Annotated[AccessClaims, Depends(get_access_claims)]


def _require_kind(claims: AccessClaims, kind: AccountKind) -> None:
    if claims.kind is not kind:
        raise WrongAccountKind(f"This operation needs a {kind.value} token.")


def _check_version(token_version: int | None, claims: AccessClaims) -> None:
    if token_version is None:
        raise InvalidToken("The account behind this token no longer exists.")
    if token_version != claims.token_version:
        raise InvalidToken("This token was issued before the password was reset.")


def _still_valid(account: AccountT | None, claims: AccessClaims) -> AccountT:
    _check_version(None if account is None else account.token_version, claims)
    assert account is not None  # _check_version raised otherwise
    return account


@requires_auth(SELLER_AUTH)
async def current_seller(claims: AccessClaimsDep, database: DatabaseDep) -> Seller:
    _require_kind(claims, AccountKind.seller)
    seller = await AccountRepository(database, Seller).get(claims.account_id)
    return _still_valid(seller, claims)


@requires_auth(PARTNER_AUTH)
async def current_partner(claims: AccessClaimsDep, database: DatabaseDep) -> Partner:
    _require_kind(claims, AccountKind.partner)
    partner = await AccountRepository(database, Partner).get(claims.account_id)
    return _still_valid(partner, claims)


async def authenticate(
    request: Request, database: Database, kind: AccountKind | None = None
) -> Caller:
    """The caller behind the request's bearer token, of `kind` if one is given.

    The token first (signature, claims, revocation), then one indexed row of the account: its
    token version and name, not the ORM entity, which cost a fifth of a read. A plain function
    rather than a dependency of its own: routes on the hot path call it from the one
    dependency that builds their service, and each dependency FastAPI resolves costs.
    """
    claims = await get_access_claims(request)
    if kind is not None:
        _require_kind(claims, kind)
    row = await caller_row(database, claims.kind, claims.account_id)
    _check_version(None if row is None else row["token_version"], claims)
    assert row is not None  # _check_version raised otherwise
    partner_status = PartnerStatus(row["status"]) if claims.kind is AccountKind.partner else None
    return Caller(
        kind=claims.kind,
        account_id=claims.account_id,
        name=row["name"],
        email_verified=row["email_verified_at"] is not None,
        partner_status=partner_status,
    )


CurrentSeller = Annotated[Seller, Depends(current_seller)]
CurrentPartner = Annotated[Partner, Depends(current_partner)]


async def account_emails(
    database: DatabaseDep, settings: SettingsDep, redis: RedisDep, request: Request
) -> AccountEmails:
    links: LinkTokens = request.app.state.link_tokens
    return AccountEmails(
        database=database,
        links=links,
        public_base_url=settings.public_base_url,
        verification_lifetime=timedelta(seconds=settings.email_verification_ttl_seconds),
        reset_lifetime=timedelta(seconds=settings.password_reset_ttl_seconds),
        caps=DailyEmailCaps(
            verifications=FixedWindowLimiter(
                redis, "verify-emails", settings.verification_emails_per_account_per_day, DAY
            ),
            resets=FixedWindowLimiter(
                redis, "reset-emails", settings.reset_emails_per_account_per_day, DAY
            ),
        ),
    )


AccountEmailsDep = Annotated[AccountEmails, Depends(account_emails)]


async def seller_service(
    database: DatabaseDep,
    hasher: PasswordHasherDep,
    codec: TokenCodecDep,
    revocations: RevocationsDep,
    emails: AccountEmailsDep,
) -> AccountService[Seller]:
    repository = AccountRepository(database, Seller)
    return AccountService(AccountKind.seller, repository, hasher, codec, revocations, emails)


async def partner_service(
    database: DatabaseDep,
    hasher: PasswordHasherDep,
    codec: TokenCodecDep,
    revocations: RevocationsDep,
    emails: AccountEmailsDep,
) -> AccountService[Partner]:
    repository = AccountRepository(database, Partner)
    return AccountService(AccountKind.partner, repository, hasher, codec, revocations, emails)


SellerServiceDep = Annotated[AccountService[Seller], Depends(seller_service)]
PartnerServiceDep = Annotated[AccountService[Partner], Depends(partner_service)]


async def partner_repository(database: DatabaseDep) -> AccountRepository[Partner]:
    return AccountRepository(database, Partner)


PartnerRepositoryDep = Annotated[AccountRepository[Partner], Depends(partner_repository)]


def login_limits(kind: AccountKind, settings: Settings, redis: RedisDep) -> LoginLimits:
    window = settings.rate_limit_window_seconds
    return LoginLimits(
        per_ip=FixedWindowLimiter(redis, "token-ip", settings.token_attempts_per_ip, window),
        per_account_and_ip=FixedWindowLimiter(
            redis,
            f"token-{kind.value}-ip",
            settings.token_attempts_per_account_and_ip,
            window,
        ),
        per_account=FixedWindowLimiter(
            redis, f"token-{kind.value}", settings.token_attempts_per_account, window
        ),
    )


def link_limits(purpose: str, kind: AccountKind, settings: Settings, redis: RedisDep) -> LinkLimits:
    """Per client IP and per account, with budgets of their own for each `purpose`."""
    window = settings.rate_limit_window_seconds
    return LinkLimits(
        per_ip=FixedWindowLimiter(redis, f"{purpose}-ip", settings.token_attempts_per_ip, window),
        per_account=FixedWindowLimiter(
            redis, f"{purpose}-{kind.value}", settings.token_attempts_per_account, window
        ),
    )


def forgot_limiter(settings: Settings, redis: RedisDep) -> FixedWindowLimiter:
    """Per client IP only: per account, the daily cap on reset emails holds them back silently."""
    return FixedWindowLimiter(
        redis, "forgot-ip", settings.token_attempts_per_ip, settings.rate_limit_window_seconds
    )


async def get_signup_limiter(settings: SettingsDep, redis: RedisDep) -> FixedWindowLimiter:
    return FixedWindowLimiter(
        redis, "signup-ip", settings.signups_per_ip, settings.rate_limit_window_seconds
    )


SignupLimiterDep = Annotated[FixedWindowLimiter, Depends(get_signup_limiter)]


async def client_ip(request: Request) -> str:
    # uvicorn rewrites the client address from X-Forwarded-For only for trusted proxies.
    return request.client.host if request.client else "unknown"


ClientIpDep = Annotated[str, Depends(client_ip)]
