"""HTTP routes for sellers and partners: parse, call the service, return."""

# No `from __future__ import annotations`: FastAPI must see the real types of the route
# parameters built inside `add_session_routes`.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Response, status

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
    login_limits,
    partner_service,
    seller_service,
)
from backend.accounts.errors import EmailTaken, InvalidCredentials
from backend.accounts.models import AccountKind, Partner, Seller
from backend.accounts.schemas import (
    PartnerCreate,
    PartnerRead,
    PartnerUpdate,
    SellerCreate,
    SellerRead,
    TokenForm,
    TokenResponse,
)
from backend.accounts.service import AccountService, update_partner
from backend.errors import RateLimited, problem_responses
from backend.redis_client import RedisDep

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

seller_router = APIRouter(prefix="/seller", tags=["Sellers"])
partner_router = APIRouter(prefix="/partner", tags=["Partners"])


def add_session_routes(
    router: APIRouter, kind: AccountKind, service_dependency: Any, account_dependency: Any
) -> None:
    """Token and logout work the same for both kinds; only the account table differs."""
    ServiceDep = Annotated[AccountService[Any], Depends(service_dependency)]  # noqa: N806
    AccountDep = Annotated[Seller | Partner, Depends(account_dependency)]  # noqa: N806

    @router.post(
        "/token",
        response_model=TokenResponse,
        responses=problem_responses(InvalidCredentials, RateLimited),
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
        Wrong email and wrong password give the same 401. Attempts are limited per client IP and
        per account (429 with `Retry-After`).
        """
        limits = login_limits(kind, settings, redis)
        issued = await service.log_in(form.username, form.password, client_ip=ip, limits=limits)
        response.headers.update(NO_STORE)
        return TokenResponse(access_token=issued.token, expires_in=issued.expires_in)

    @router.post(
        "/logout",
        status_code=status.HTTP_204_NO_CONTENT,
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
    responses=problem_responses(EmailTaken, RateLimited),
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


@partner_router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=PartnerRead,
    responses=problem_responses(EmailTaken, RateLimited),
)
async def sign_up_partner(
    body: PartnerCreate, service: PartnerServiceDep, limiter: SignupLimiterDep, ip: ClientIpDep
) -> Partner:
    """Create a delivery partner account with the zip codes it serves and its capacity.

    New shipments to one of these zip codes are assigned to the least-loaded partner that has
    fewer active shipments than its `max_handling_capacity`.
    """
    await limiter.hit(ip)
    partner = Partner(**body.model_dump(exclude={"password"}), password_hash="")
    return await service.sign_up(partner, body.password)


@partner_router.get("/me", response_model=PartnerRead)
async def read_current_partner(partner: CurrentPartner) -> Partner:
    """The delivery partner the bearer token belongs to."""
    return partner


@partner_router.patch("/me", response_model=PartnerRead)
async def update_current_partner(
    body: PartnerUpdate, partner: CurrentPartner, partners: PartnerRepositoryDep
) -> Partner:
    """Change the name, served zip codes or capacity. Fields left out stay as they are.

    Lowering the capacity below the current number of active shipments keeps those shipments;
    the partner simply gets no new ones until it is under capacity again.
    """
    return await update_partner(partner, body, partners)


add_session_routes(partner_router, AccountKind.partner, partner_service, current_partner)
