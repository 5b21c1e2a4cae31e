"""Dependencies that authenticate a request and hand handlers the loaded account."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request

from backend.accounts.api_keys.models import Scope
from backend.accounts.api_keys.secret import looks_like_key, parse_secret
from backend.accounts.api_keys.service import verified_key
from backend.accounts.caller import Caller, KeyGrant
from backend.accounts.emails import AccountEmails, DailyEmailCaps
from backend.accounts.errors import (
    AccessTokenRequired,
    InsufficientScope,
    InvalidToken,
    WrongAccountKind,
)
from backend.accounts.models import AccountKind, Partner, Seller
from backend.accounts.passwords import PasswordHasher
from backend.accounts.repository import AccountRepository, account_by_id
from backend.accounts.service import AccountService, LinkLimits, LoginLimits
from backend.accounts.tokens import AccessClaims, RevocationList, TokenCodec
from backend.accounts.tools import AccountTools
from backend.auth_schemes import PARTNER_AUTH, SELLER_AUTH, requires_auth
from backend.config import Settings
from backend.context import context_of
from backend.db import UnitOfWorkDep, unit_of_work_of
from backend.errors import Unauthorized
from backend.rate_limit import FixedWindowLimiter
from backend.redis_client import RedisDep

DAY = 24 * 3600


# Every dependency here is `async def`, even when it awaits nothing: FastAPI runs plain `def`
# dependencies on a worker thread, and a thread hop per dependency per request is measurable.
async def get_app_settings(request: Request) -> Settings:
    return context_of(request).settings


async def get_token_codec(request: Request) -> TokenCodec:
    return context_of(request).part(AccountTools).token_codec


async def get_password_hasher(request: Request) -> PasswordHasher:
    return context_of(request).part(AccountTools).password_hasher


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
    """The bearer token's claims, once checked (signature, claims, revocation); checked once
    per request however many dependencies ask."""
    checked: AccessClaims | None = getattr(request.state, "access_claims", None)
    if checked is not None:
        return checked
    # The codec and Redis come straight from the app's context rather than as sub-dependencies:
    # this runs on every authenticated request, and each dependency FastAPI resolves costs.
    context = context_of(request)
    claims = context.part(AccountTools).token_codec.decode(_bearer_token(request))
    # Fails closed: if Redis cannot answer, the request gets a 503, never a pass.
    if await RevocationList(context.redis).is_revoked(claims):
        raise InvalidToken("This token has been revoked.")
    request.state.access_claims = claims
    return claims


AccessClaimsDep = Annotated[AccessClaims, Depends(get_access_claims)]


async def authenticate(
    request: Request, kind: AccountKind | None = None, scope: Scope | None = None
) -> Caller:
    """The caller behind the request's bearer credential, of `kind` if one is given: the one
    way every route authenticates.

    An access token (a JWT: signature, claims, revocation, then the account by primary key,
    whose token version must still be the token's), or an API key (its row and account in one
    query, then its per-key rate limit). A key is accepted only where the route names the
    `scope` it needs, and only if the key has it. Checked once per request, however many
    dependencies ask. A plain function rather than a dependency of its own: the shipment routes
    call it from the one dependency that builds their service, and each dependency costs.
    """
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None:
        credential = _bearer_token(request)
        if looks_like_key(credential):
            caller = await _caller_by_key(request, credential)
        else:
            caller = await _caller_by_token(request)
        request.state.caller = caller
    if kind is not None and caller.kind is not kind:
        credential_name = "key" if caller.key is not None else "token"
        raise WrongAccountKind(f"This operation needs a {kind.value} {credential_name}.")
    if caller.key is not None:
        if scope is None:
            raise AccessTokenRequired()
        if scope not in caller.key.scopes:
            raise InsufficientScope(scope.value)
    return caller


async def _caller_by_token(request: Request) -> Caller:
    claims = await get_access_claims(request)
    session = unit_of_work_of(request).session
    account = await account_by_id(session, claims.kind, claims.account_id)
    if account is None:
        raise InvalidToken("The account behind this token no longer exists.")
    if account.token_version != claims.token_version:
        raise InvalidToken("This token was issued before the password was reset.")
    return Caller(claims.kind, account, claims=claims)


async def _caller_by_key(request: Request, credential: str) -> Caller:
    context = context_of(request)
    presented = parse_secret(credential)
    if presented is None:
        raise InvalidToken("This is not a valid API key.")
    # Per key, whichever replica and address it calls from, and before the query: like the
    # token's revocation check, Redis is asked while the request holds no pooled connection.
    # Fails closed (503) without Redis.
    await FixedWindowLimiter(
        context.redis, "api-key", context.settings.api_key_requests_per_second, 1
    ).hit(presented.digest.hex())
    found = await verified_key(unit_of_work_of(request).session, presented)
    key = found.key
    context.part(AccountTools).key_usage.note(key.id, key.last_used_at)
    grant = KeyGrant(
        key_id=key.id,
        scopes=frozenset(Scope(scope) for scope in key.scopes),
        livemode=key.livemode,
        last_used_at=key.last_used_at,
    )
    return Caller(key.account_kind, found.account, key=grant)


@requires_auth(SELLER_AUTH, PARTNER_AUTH)
async def current_caller(request: Request) -> Caller:
    return await authenticate(request)


@requires_auth(SELLER_AUTH)
async def current_seller(request: Request) -> Seller:
    caller = await authenticate(request, AccountKind.seller)
    assert isinstance(caller.account, Seller)
    return caller.account


@requires_auth(PARTNER_AUTH)
async def current_partner(request: Request) -> Partner:
    caller = await authenticate(request, AccountKind.partner)
    assert isinstance(caller.account, Partner)
    return caller.account


def _seller_with(scope: Scope) -> Callable[[Request], Awaitable[Caller]]:
    @requires_auth(SELLER_AUTH, key_scope=scope)
    async def current_seller_with_scope(request: Request) -> Caller:
        """A seller by access token, or by an API key that has `scope`."""
        return await authenticate(request, AccountKind.seller, scope)

    return current_seller_with_scope


CurrentCaller = Annotated[Caller, Depends(current_caller)]
CurrentSeller = Annotated[Seller, Depends(current_seller)]
CurrentPartner = Annotated[Partner, Depends(current_partner)]
# The seller routes an integration calls with a key.
seller_for_webhooks = _seller_with(Scope.webhooks)
seller_reading_events = _seller_with(Scope.events_read)
SellerForWebhooks = Annotated[Caller, Depends(seller_for_webhooks)]
SellerReadingEvents = Annotated[Caller, Depends(seller_reading_events)]


async def account_emails(
    unit: UnitOfWorkDep, settings: SettingsDep, redis: RedisDep, request: Request
) -> AccountEmails:
    return AccountEmails(
        session=unit.session,
        links=context_of(request).part(AccountTools).link_tokens,
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
    unit: UnitOfWorkDep,
    hasher: PasswordHasherDep,
    codec: TokenCodecDep,
    revocations: RevocationsDep,
    emails: AccountEmailsDep,
) -> AccountService[Seller]:
    repository = AccountRepository(unit, Seller)
    return AccountService(AccountKind.seller, repository, hasher, codec, revocations, emails)


async def partner_service(
    unit: UnitOfWorkDep,
    hasher: PasswordHasherDep,
    codec: TokenCodecDep,
    revocations: RevocationsDep,
    emails: AccountEmailsDep,
) -> AccountService[Partner]:
    repository = AccountRepository(unit, Partner)
    return AccountService(AccountKind.partner, repository, hasher, codec, revocations, emails)


SellerServiceDep = Annotated[AccountService[Seller], Depends(seller_service)]
PartnerServiceDep = Annotated[AccountService[Partner], Depends(partner_service)]


async def partner_repository(unit: UnitOfWorkDep) -> AccountRepository[Partner]:
    return AccountRepository(unit, Partner)


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
