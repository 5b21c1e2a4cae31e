"""HTTP routes for sellers and partners: parse, call the service, return."""

# No `from __future__ import annotations`: FastAPI must see the real types of the route
# parameters built inside `add_session_routes`.

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, Response, status

from backend.accounts.api_keys.router import add_api_key_routes
from backend.accounts.dependencies import (
    AccessClaimsDep,
    ClientIpDep,
    CurrentPartner,
    CurrentSeller,
    PartnerRepositoryDep,
    PartnerServiceDep,
    SellerServiceDep,
    SettingsDep,
    SignupLimiterDep,
    current_partner,
    current_seller,
    forgot_limiter,
    link_limits,
    login_limits,
    partner_service,
    seller_service,
)
from backend.accounts.errors import (
    EmailAlreadyVerified,
    EmailTaken,
    InvalidCredentials,
    InvalidLinkToken,
    PartnerNameLocked,
    PasswordHashingBusy,
)
from backend.accounts.models import AccountKind, Partner, Seller
from backend.accounts.partner_approval import admit
from backend.accounts.schemas import (
    EmailVerification,
    PartnerCreate,
    PartnerRead,
    PartnerUpdate,
    PasswordForgot,
    PasswordReset,
    SellerCreate,
    SellerRead,
    TokenForm,
    TokenResponse,
)
from backend.accounts.service import AccountService, update_partner
from backend.accounts.tokens import NO_STORE
from backend.db import UnitOfWorkRoute
from backend.errors import RateLimited, problem_responses
from backend.pages import PAGE_HEADERS, page_templates
from backend.redis_client import RedisDep
from backend.request_body import NO_REQUEST_BODY

templates = page_templates(Path(__file__).parent / "templates")

seller_router = APIRouter(prefix="/seller", tags=["Sellers"], route_class=UnitOfWorkRoute)
partner_router = APIRouter(prefix="/partner", tags=["Partners"], route_class=UnitOfWorkRoute)


def add_session_routes(
    router: APIRouter, kind: AccountKind, service_dependency: Any, account_dependency: Any
) -> None:
    """Token and logout work the same for both kinds; only the account table differs."""
    ServiceDep = Annotated[AccountService[Any], Depends(service_dependency)]  # noqa: N806
    AccountDep = Annotated[Seller | Partner, Depends(account_dependency)]  # noqa: N806

    @router.post(
        "/token",
        response_model=TokenResponse,
        responses=problem_responses(InvalidCredentials, RateLimited, PasswordHashingBusy),
        summary=f"Log in as a {kind.value}",
        operation_id=f"{kind.value}_token",
    )
    async def issue_token(
        form: Annotated[TokenForm, Form()],
        response: Response,
        service: ServiceDep,
        settings: SettingsDep,
        redis: RedisDep,
        ip: ClientIpDep,
    ) -> TokenResponse:
        """OAuth2 password grant: send `username` (the email) and `password` as a form.

        The access token lasts `expires_in` seconds; send it as `Authorization: Bearer <token>`.
        Wrong email and wrong password give the same 401. Attempts are limited per client IP, per
        account and client IP, and, higher, per account (429 with `Retry-After`); 503 with
        `Retry-After` when too many password checks are already waiting.
        """
        limits = login_limits(kind, settings, redis)
        issued = await service.log_in(form.username, form.password, client_ip=ip, limits=limits)
        response.headers.update(NO_STORE)
        return TokenResponse(access_token=issued.token, expires_in=issued.expires_in)

    @router.get(
        "/verify",
        response_model=EmailVerification,
        summary=f"Confirm a {kind.value}'s email address",
        operation_id=f"{kind.value}_verify_email",
        responses={
            200: {"content": {"text/html": {"example": "<!doctype html>...confirmed...</html>"}}},
            **problem_responses(InvalidLinkToken, RateLimited),
        },
    )
    async def verify_email(
        request: Request,
        service: ServiceDep,
        token: Annotated[str, Query(min_length=1, max_length=2000)],
        settings: SettingsDep,
        redis: RedisDep,
        ip: ClientIpDep,
    ) -> Response | EmailVerification:
        """The link in the sign-up email. Browsers (`Accept: text/html`) get a page for the
        person who clicked it; API clients get JSON, and problem+json when the link is bad.
        Attempts are limited per client IP and per account (429 with `Retry-After`)."""
        wants_page = "text/html" in request.headers.get("accept", "")
        limits = link_limits("verify", kind, settings, redis)
        try:
            account = await service.verify_email(token, client_ip=ip, limits=limits)
        except InvalidLinkToken:
            if not wants_page:
                raise
            return templates.TemplateResponse(
                request,
                "email_verification.html",
                {"verified": False},
                status_code=400,
                headers=PAGE_HEADERS,
            )
        if wants_page:
            return templates.TemplateResponse(
                request,
                "email_verification.html",
                {"verified": True, "email": account.email},
                headers=PAGE_HEADERS,
            )
        assert account.email_verified_at is not None
        return EmailVerification(email=account.email, email_verified_at=account.email_verified_at)

    @router.post(
        "/password/forgot",
        status_code=status.HTTP_202_ACCEPTED,
        response_class=Response,
        responses={
            202: {"description": "Accepted; an email follows if the account exists."},
            **problem_responses(RateLimited),
        },
        summary=f"Ask for a {kind.value} password reset",
        operation_id=f"{kind.value}_password_forgot",
    )
    async def forgot_password(
        body: PasswordForgot,
        service: ServiceDep,
        settings: SettingsDep,
        redis: RedisDep,
        ip: ClientIpDep,
    ) -> Response:
        """Email a single-use reset token to the account's address, if there is such an account.

        Always 202, so the answer never tells whether an address is registered; an account gets
        at most `RESET_EMAILS_PER_ACCOUNT_PER_DAY` reset emails a day. Requests are limited per
        client IP (429 with `Retry-After`).
        """
        per_ip = forgot_limiter(settings, redis)
        await service.request_password_reset(body.email, client_ip=ip, per_ip=per_ip)
        return Response(status_code=status.HTTP_202_ACCEPTED)

    @router.post(
        "/password/reset",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=problem_responses(InvalidLinkToken, RateLimited, PasswordHashingBusy),
        summary=f"Set a new {kind.value} password",
        operation_id=f"{kind.value}_password_reset",
    )
    async def reset_password(
        body: PasswordReset,
        service: ServiceDep,
        settings: SettingsDep,
        redis: RedisDep,
        ip: ClientIpDep,
    ) -> None:
        """Set a new password with the token from the reset email. The token works once, and
        every access token issued before stops working at once, open streams included.
        Attempts are limited per client IP and per account (429 with `Retry-After`)."""
        limits = link_limits("reset", kind, settings, redis)
        await service.reset_password(body.token, body.new_password, client_ip=ip, limits=limits)

    @router.post(
        "/verify/resend",
        status_code=status.HTTP_202_ACCEPTED,
        response_class=Response,
        dependencies=[NO_REQUEST_BODY],
        responses={
            202: {"description": "Accepted; a new verification email follows."},
            **problem_responses(EmailAlreadyVerified, RateLimited),
        },
        summary=f"Send a {kind.value} another verification email",
        operation_id=f"{kind.value}_resend_verification",
    )
    async def resend_verification(account: AccountDep, service: ServiceDep) -> Response:
        """Email a new address verification link to the account of the bearer token.

        An account gets at most `VERIFICATION_EMAILS_PER_ACCOUNT_PER_DAY` verification emails a
        day, the one sent at sign-up included; beyond, 429 with `Retry-After`.
        """
        await service.resend_verification(account)
        return Response(status_code=status.HTTP_202_ACCEPTED)

    @router.post(
        "/logout",
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=[NO_REQUEST_BODY],
        summary=f"Log out a {kind.value}",
        operation_id=f"{kind.value}_logout",
    )
    async def log_out(_account: AccountDep, claims: AccessClaimsDep, service: ServiceDep) -> None:
        """Revoke the bearer token used for this call, at once and on every replica."""
        await service.log_out(claims)


@seller_router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=SellerRead,
    responses=problem_responses(EmailTaken, RateLimited, PasswordHashingBusy),
)
async def sign_up_seller(
    body: SellerCreate, service: SellerServiceDep, limiter: SignupLimiterDep, ip: ClientIpDep
) -> Seller:
    """Create a seller account. Emails are unique among sellers, ignoring case."""
    await limiter.hit(ip)
    seller = Seller(**body.model_dump(exclude={"password"}), password_hash="")
    return await service.sign_up(seller, body.password)


@seller_router.get("/me", response_model=SellerRead)
async def read_current_seller(seller: CurrentSeller) -> Seller:
    """The seller the bearer token belongs to."""
    return seller


add_session_routes(seller_router, AccountKind.seller, seller_service, current_seller)
add_api_key_routes(seller_router, AccountKind.seller, current_seller)


@partner_router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=PartnerRead,
    responses=problem_responses(EmailTaken, RateLimited, PasswordHashingBusy),
)
async def sign_up_partner(
    body: PartnerCreate,
    service: PartnerServiceDep,
    limiter: SignupLimiterDep,
    ip: ClientIpDep,
    settings: SettingsDep,
) -> Partner:
    """Create a delivery partner account with the zip codes it serves and its capacity.

    The account starts `pending`: it can log in and edit its profile, but gets no shipments
    until the Shiptrack operator approves it (an email says so). Once approved, new shipments
    to one of these zip codes are assigned to the least-loaded approved partner that has fewer
    active shipments than its `max_handling_capacity`.
    """
    await limiter.hit(ip)
    partner = Partner(**body.model_dump(exclude={"password"}), password_hash="")
    return await service.sign_up(admit(partner, settings.partner_approval), body.password)


@partner_router.get("/me", response_model=PartnerRead)
async def read_current_partner(partner: CurrentPartner) -> Partner:
    """The delivery partner the bearer token belongs to, with its approval `status`."""
    return partner


@partner_router.patch(
    "/me", response_model=PartnerRead, responses=problem_responses(PartnerNameLocked)
)
async def update_current_partner(
    body: PartnerUpdate, partner: CurrentPartner, partners: PartnerRepositoryDep
) -> Partner:
    """Change the name, served zip codes or capacity. Fields left out stay as they are.

    The name can be changed only while the account is `pending`: once approved, recipients
    see it on their tracking pages and only the Shiptrack operator changes it (409
    `partner_name_locked`; sending the current name is fine). Lowering the capacity below the
    current number of active shipments keeps those shipments; the partner simply gets no new
    ones until it is under capacity again.
    """
    return await update_partner(partner, body, partners)


add_session_routes(partner_router, AccountKind.partner, partner_service, current_partner)
add_api_key_routes(partner_router, AccountKind.partner, current_partner)
