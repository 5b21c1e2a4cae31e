"""The shipment routes' dependencies: the caller's shipments, authenticated in the same step.

Each route resolves one dependency that checks the bearer token and builds the service bound to
the caller, on the request's unit of work (the routers' `UnitOfWorkRoute`). Resolving a
dependency has a cost of its own (each one the read route dropped saved 4-10% of its
instructions, bench/README.md), so the hot routes keep to this one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from backend.accounts.api_keys.models import Scope
from backend.accounts.caller import Caller
from backend.accounts.dependencies import authenticate
from backend.accounts.errors import PartnerSuspended
from backend.accounts.models import AccountKind, PartnerStatus
from backend.accounts.tools import AccountTools
from backend.auth_schemes import PARTNER_AUTH, SELLER_AUTH, requires_auth
from backend.context import context_of
from backend.db import SessionDep, unit_of_work_of
from backend.shipments.public import PublicTracking
from backend.shipments.service import ShipmentService
from backend.shipments.tools import ShipmentTools


async def _callers_service(
    request: Request, kind: AccountKind | None, scope: Scope | None
) -> ShipmentService:
    return shipment_service_for(request, await authenticate(request, kind, scope))


def shipment_service_for(request: Request, caller: Caller) -> ShipmentService:
    """The service bound to an authenticated caller, on the request's unit of work."""
    # A clear answer for a suspended partner; the queries themselves show a partner nothing
    # unless it is approved (backend/shipments/repository.py), so a suspension that lands
    # after this check still hides every shipment.
    if caller.partner_status is PartnerStatus.suspended:
        raise PartnerSuspended()
    context = context_of(request)
    tools = context.part(ShipmentTools)
    return ShipmentService(
        caller.account,
        unit_of_work_of(request),
        tools.delivery_codes,
        # New events are announced on the live-update pool, never the one that authenticates.
        tools.stream_hub.live_redis,
        limits=tools.limits,
        links=context.part(AccountTools).link_tokens,
        settings=context.settings,
        livemode=caller.livemode,
    )


@requires_auth(SELLER_AUTH, PARTNER_AUTH, key_scope=Scope.shipments_read)
async def callers_shipments(request: Request) -> ShipmentService:
    """A seller's own shipments, or those assigned to the calling partner."""
    return await _callers_service(request, None, Scope.shipments_read)


@requires_auth(SELLER_AUTH, PARTNER_AUTH)
async def streaming_callers_shipments(request: Request) -> ShipmentService:
    """As `callers_shipments`, with an access token only: an open stream re-checks its token's
    revocation and expiry as it runs, which a key, checked in PostgreSQL, does not have."""
    return await _callers_service(request, None, None)


@requires_auth(SELLER_AUTH, key_scope=Scope.shipments_read)
async def sellers_reading_shipments(request: Request) -> ShipmentService:
    """A seller's view, for what only sellers read (coverage)."""
    return await _callers_service(request, AccountKind.seller, Scope.shipments_read)


@requires_auth(SELLER_AUTH, key_scope=Scope.shipments_write)
async def sellers_shipments(request: Request) -> ShipmentService:
    return await _callers_service(request, AccountKind.seller, Scope.shipments_write)


@requires_auth(PARTNER_AUTH, key_scope=Scope.shipments_write)
async def partners_shipments(request: Request) -> ShipmentService:
    return await _callers_service(request, AccountKind.partner, Scope.shipments_write)


async def public_tracking(session: SessionDep, request: Request) -> PublicTracking:
    return PublicTracking(session, context_of(request).part(AccountTools).link_tokens)


CallersShipments = Annotated[ShipmentService, Depends(callers_shipments)]
StreamingCallersShipments = Annotated[ShipmentService, Depends(streaming_callers_shipments)]
SellersShipments = Annotated[ShipmentService, Depends(sellers_shipments)]
SellersReadingShipments = Annotated[ShipmentService, Depends(sellers_reading_shipments)]
PartnersShipments = Annotated[ShipmentService, Depends(partners_shipments)]
PublicTrackingDep = Annotated[PublicTracking, Depends(public_tracking)]
