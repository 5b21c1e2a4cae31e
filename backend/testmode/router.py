"""HTTP routes of test mode: parse, call one service method, return."""

from __future__ import annotations

import functools
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from backend.accounts.api_keys.models import Scope
from backend.accounts.caller import Caller
from backend.accounts.dependencies import authenticate
from backend.accounts.models import AccountKind
from backend.auth_schemes import requires_auth
from backend.context import context_of
from backend.db import UnitOfWorkRoute, unit_of_work_of
from backend.errors import Forbidden, problem_responses
from backend.outbox.email import EmailRenderer
from backend.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, InvalidCursor
from backend.request_body import NO_REQUEST_BODY
from backend.shipments.dependencies import shipment_service_for
from backend.shipments.errors import InvalidTransition, ShipmentNotFound
from backend.shipments.schemas import ShipmentRead
from backend.testmode.schemas import AdvanceRequest, ClearedTestData, RecordedEmailPage
from backend.testmode.service import SellerTestData

router = APIRouter(prefix="/test", tags=["Test mode"], route_class=UnitOfWorkRoute)


class TestKeyRequired(Forbidden):
    code = "test_key_required"
    title = "Test key required"
    default_detail = (
        "Test mode routes take a seller's test API key (st_test_…), which sees only test data; "
        "create one with POST /seller/api-keys and mode `test`."
    )


async def _test_seller(request: Request, scope: Scope) -> Caller:
    caller = await authenticate(request, AccountKind.seller, scope)
    if caller.livemode:
        raise TestKeyRequired()
    return caller


@requires_auth(key_scope=Scope.shipments_read)
async def seller_test_key_reading(request: Request) -> Caller:
    """A seller's test key with `shipments:read`."""
    return await _test_seller(request, Scope.shipments_read)


@requires_auth(key_scope=Scope.shipments_write)
async def seller_test_key_writing(request: Request) -> Caller:
    """A seller's test key with `shipments:write`."""
    return await _test_seller(request, Scope.shipments_write)


@functools.cache
def _renderer(public_base_url: str) -> EmailRenderer:
    return EmailRenderer(public_base_url)


def _test_data(request: Request, caller: Caller) -> SellerTestData:
    renderer = _renderer(context_of(request).settings.public_base_url)
    return SellerTestData(unit_of_work_of(request).session, caller.account_id, renderer)


TestReader = Annotated[Caller, Depends(seller_test_key_reading)]
TestWriter = Annotated[Caller, Depends(seller_test_key_writing)]
_KEY_ERRORS = (TestKeyRequired,)


@router.get(
    "/emails",
    response_model=RecordedEmailPage,
    responses=problem_responses(*_KEY_ERRORS, InvalidCursor),
)
async def list_test_emails(
    caller: TestReader,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RecordedEmailPage:
    """The emails your test shipments' recipients would have received, newest first.

    Test shipments never send email: each one is recorded here instead, rendered exactly as it
    would have been sent (subject, plain text and HTML), delivery codes included.
    """
    return await _test_data(request, caller).emails(limit=limit, cursor=cursor)


@router.post(
    "/shipments/{shipment_id}/advance",
    response_model=ShipmentRead,
    responses=problem_responses(*_KEY_ERRORS, ShipmentNotFound, InvalidTransition),
)
async def advance_test_shipment(
    shipment_id: uuid.UUID,
    body: AdvanceRequest,
    caller: TestWriter,
    request: Request,
    response: Response,
) -> ShipmentRead:
    """Move a test shipment along a scenario to the status `to`, as its simulated partner
    would report it: each step is a real transition with its timeline event, its webhooks
    (signed, `livemode: false`), its feed entries and its recorded emails.

    Scenarios: `delivered` (placed → in transit → out for delivery → delivered),
    `delivered_second_attempt` (a failed attempt first), `returned` (refused at the door),
    `cancelled` (cancelled while placed). A live shipment's id is 404.
    """
    shipments = shipment_service_for(request, caller)
    advanced = await shipments.advance_test_shipment(shipment_id, body.to, body.scenario)
    response.headers["ETag"] = f'"{advanced.version}"'
    return advanced


@router.delete(
    "/data",
    response_model=ClearedTestData,
    dependencies=[NO_REQUEST_BODY],
    responses=problem_responses(*_KEY_ERRORS),
)
async def clear_test_data(caller: TestWriter, request: Request) -> ClearedTestData:
    """Delete all your test data: test shipments (with their timelines and recorded emails),
    test events and their deliveries, and test webhook endpoints. Live data is untouched."""
    return await _test_data(request, caller).clear()
