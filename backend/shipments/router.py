"""HTTP routes for shipments: parse, call the service, return."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from backend.accounts.errors import PartnerSuspended, WrongAccountKind
from backend.db import UnitOfWorkRoute
from backend.errors import RateLimited, problem_responses
from backend.fields import ZipCode
from backend.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, InvalidCursor
from backend.request_body import NO_REQUEST_BODY
from backend.shipments.dependencies import (
    CallersShipments,
    PartnersShipments,
    SellersReadingShipments,
    SellersShipments,
    StreamingCallersShipments,
)
from backend.shipments.errors import (
    DeliveryLocked,
    DetailsLocked,
    EmailNotVerified,
    FailureReasonNotAllowed,
    FailureReasonRequired,
    IdempotencyKeyReused,
    InvalidEventTime,
    InvalidTransition,
    InvalidVerificationCode,
    NoPartnerAvailable,
    ShipmentNotFound,
    TimelineFull,
    VerificationCodeBurned,
    VerificationCodeRequired,
    VersionMismatch,
)
from backend.shipments.live import SSE_RESPONSES, LastEventId, open_timeline_stream
from backend.shipments.schemas import (
    CoverageRead,
    DeliveryDetailsUpdate,
    Reference,
    ScanBatch,
    ScanResults,
    ShipmentCreate,
    ShipmentPage,
    ShipmentRead,
    ShipmentUpdate,
    TagSlug,
    TagsReplace,
)
from backend.shipments.status import STATUS_MACHINE_DOC, ShipmentStatus

router = APIRouter(prefix="/shipments", tags=["Shipments"], route_class=UnitOfWorkRoute)
coverage_router = APIRouter(prefix="/coverage", tags=["Shipments"], route_class=UnitOfWorkRoute)
scans_router = APIRouter(prefix="/scans", tags=["Shipments"], route_class=UnitOfWorkRoute)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Any unique string (a UUID works). Retries with the same key and body get "
        "the original response and create nothing, for IDEMPOTENCY_KEY_RETENTION_HOURS (24 h by "
        "default): a retry after that creates a new shipment.",
    ),
]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        pattern=r'^(\*|(W/)?"?[0-9]{1,9}"?)$',
        description="The `version` (or `ETag`) you last saw; 412 if the shipment changed since. "
        "`*` matches any version.",
    ),
]


def _expected_version(if_match: str | None) -> int | None:
    """`3`, `"3"` and `W/"3"` name version 3; no header or `*` accepts any version."""
    if if_match is None or if_match == "*":
        return None
    return int(if_match.removeprefix("W/").strip('"'))


def _etag(shipment: ShipmentRead, response: Response) -> ShipmentRead:
    response.headers["ETag"] = f'"{shipment.version}"'
    return shipment


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ShipmentRead,
    responses=problem_responses(
        NoPartnerAvailable, IdempotencyKeyReused, EmailNotVerified, RateLimited
    ),
)
async def create_shipment(
    body: ShipmentCreate,
    shipments: SellersShipments,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ShipmentRead:
    """Create a shipment and assign it to a delivery partner at once.

    The partner is the least-loaded one that serves the destination zip code and has spare
    capacity; if there is none, nothing is stored and the answer is 409 `no_partner_available`.
    The shipment starts `placed`, with an ETA of now plus the default transit time.

    Send an `Idempotency-Key` to retry safely: the same key and body return the original 201
    (with `Idempotent-Replayed: true`); the same key with another body is 422. Keys are
    remembered for `IDEMPOTENCY_KEY_RETENTION_HOURS` (24 h by default, like Stripe's): a retry
    after that creates a new shipment.

    Limits: `SHIPMENTS_PER_SELLER_PER_MINUTE` creates a minute (429 with `Retry-After`); until
    its email address is verified, a seller may create `UNVERIFIED_SELLER_SHIPMENT_LIMIT`
    shipments (403 `email_not_verified` beyond). Past `RECIPIENT_EMAILS_PER_SELLER_PER_HOUR`,
    shipments are still created and their recipients' emails wait for a later hour. Shipments
    still `placed` after `PLACED_EXPIRY_HOURS` are cancelled automatically.
    """
    created = await shipments.create(body, idempotency_key)
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/shipments/{created.shipment.id}"
    return _etag(created.shipment, response)


@router.get(
    "",
    response_model=ShipmentPage,
    responses=problem_responses(InvalidCursor, PartnerSuspended, WrongAccountKind),
)
async def list_shipments(
    shipments: CallersShipments,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
    status_filter: Annotated[ShipmentStatus | None, Query(alias="status")] = None,
    tag: Annotated[TagSlug | None, Query()] = None,
    reference: Annotated[
        Reference | None,
        Query(description="Sellers only: your own `reference` (an order number), exactly."),
    ] = None,
    include: Annotated[
        str | None,
        Query(
            pattern=r"^(timeline)?$",
            description="What each shipment embeds. Left out: everything, today the `timeline` "
            "(up to MAX_EVENTS_PER_SHIPMENT events each). `include=` (empty) leaves the "
            "timelines out (`timeline` is then null): a much smaller and faster page when "
            "shipments have long timelines. `include=timeline` is the default shape.",
        ),
    ] = None,
) -> ShipmentPage:
    """Shipments newest first: a seller's own, or those assigned to the calling partner.

    Filter by `status`, by `tag` and (sellers) by your own `reference`; follow `next_cursor`
    until it is null. A partner sees its shipments once the operator has approved it (an empty
    list while `pending`; 403 `partner_suspended` while suspended). `include=` lists them
    without their timelines.
    """
    return await shipments.list_page(
        limit=limit,
        cursor=cursor,
        status=status_filter,
        tag=tag,
        reference=reference,
        with_timeline=include is None or include == "timeline",
    )


@router.get(
    "/{shipment_id}",
    response_model=ShipmentRead,
    responses=problem_responses(ShipmentNotFound, PartnerSuspended),
)
async def get_shipment(
    shipment_id: uuid.UUID,
    shipments: CallersShipments,
    response: Response,
) -> ShipmentRead:
    """One shipment with its whole timeline, for its seller or its assigned partner.

    Anyone else gets 404, whether or not the id exists.
    """
    return _etag(await shipments.get(shipment_id), response)


@router.get(
    "/{shipment_id}/stream",
    response_class=StreamingResponse,
    responses={**SSE_RESPONSES, **problem_responses(ShipmentNotFound, PartnerSuspended)},
)
async def stream_shipment(
    request: Request,
    shipment_id: uuid.UUID,
    shipments: StreamingCallersShipments,
    last_event_id: LastEventId = None,
) -> Response:
    """Live timeline of a shipment for its seller or assigned partner (Server-Sent Events).

    Starts with every event after `Last-Event-ID` (all of them without it), then each new one
    as it happens, on whichever replica it happened. The stream ends when the token expires
    or is revoked; open streams are capped per client address (429) and per server (503).
    Streams take an access token, not an API key: integrations follow webhooks or the feed.
    """
    await shipments.get(shipment_id)  # 404 unless the caller may see it
    return await open_timeline_stream(request, shipment_id, last_event_id or 0, authenticated=True)


@router.patch(
    "/{shipment_id}",
    response_model=ShipmentRead,
    responses=problem_responses(
        ShipmentNotFound,
        WrongAccountKind,
        PartnerSuspended,
        InvalidTransition,
        VersionMismatch,
        VerificationCodeRequired,
        InvalidVerificationCode,
        VerificationCodeBurned,
        DeliveryLocked,
        TimelineFull,
        RateLimited,
        InvalidEventTime,
        FailureReasonRequired,
        FailureReasonNotAllowed,
    ),
    description=STATUS_MACHINE_DOC,
)
async def update_shipment(
    shipment_id: uuid.UUID,
    body: ShipmentUpdate,
    shipments: PartnersShipments,
    response: Response,
    if_match: IfMatch = None,
) -> ShipmentRead:
    """Report a step as the assigned partner: a new status, a location scan, a note or an ETA.

    Every accepted report appends one timeline event and increments `version`. Say when it
    happened with `occurred_at` (default now; a scan uploaded late keeps its own time) and where
    with `location`; timelines are shown by `occurred_at`, while `sequence` keeps the recording
    order and the status is always the one reported last.

    A failed delivery attempt takes an out-for-delivery shipment back to `in_transit` with a
    `failure_reason` (422 `failure_reason_required` without one): `attempts` counts them, the
    recipient is emailed what happened and what comes next, and after MAX_DELIVERY_ATTEMPTS
    (3) the shipment is returned to its sender by itself. `refused` and `address_not_found` may
    go straight to `returned`. `delivered`
    needs the recipient's `verification_code`: a wrong one is 422, and after five wrong tries
    the code is burned (429) until the shipment goes out for delivery again. After ten wrong
    tries across all of a shipment's codes it is locked (409 `delivery_locked`): it can only be
    returned. Code guesses are rate-limited per partner (429).

    A timeline holds at most `MAX_EVENTS_PER_SHIPMENT` events; the last place is kept for the
    final status, so other reports get 409 `timeline_full` once only that one is left.
    """
    expected = _expected_version(if_match)
    updated = await shipments.report(shipment_id, body, expected_version=expected)
    return _etag(updated, response)


@router.patch(
    "/{shipment_id}/delivery-details",
    response_model=ShipmentRead,
    responses=problem_responses(
        ShipmentNotFound, DetailsLocked, VersionMismatch, NoPartnerAvailable, TimelineFull
    ),
)
async def correct_delivery_details(
    shipment_id: uuid.UUID,
    body: DeliveryDetailsUpdate,
    shipments: SellersShipments,
    response: Response,
    if_match: IfMatch = None,
) -> ShipmentRead:
    """Correct the recipient's name, email or phone, or the destination's address line, city
    or zip code, while the shipment is `placed` or `in_transit` (409
    `delivery_details_locked` after that).

    Fields left out keep their value. A correction adds one timeline event (public views say
    only "Delivery details updated"), increments `version` and emails the recipient, at the new
    address if the email changed. A new zip code that the shipment's partner does not serve
    moves it to a partner that does and has room, in the same transaction; when none can take
    it the answer is 409 `no_partner_available` and nothing changes. A correction that changes
    nothing records nothing.
    """
    expected = _expected_version(if_match)
    corrected = await shipments.correct_delivery_details(
        shipment_id, body, expected_version=expected
    )
    return _etag(corrected, response)


@router.post(
    "/{shipment_id}/cancel",
    response_model=ShipmentRead,
    dependencies=[NO_REQUEST_BODY],
    responses=problem_responses(ShipmentNotFound, InvalidTransition),
)
async def cancel_shipment(
    shipment_id: uuid.UUID, shipments: SellersShipments, response: Response
) -> ShipmentRead:
    """Cancel a shipment that is still `placed`; its partner's capacity is freed at once."""
    return _etag(await shipments.cancel(shipment_id), response)


@router.put(
    "/{shipment_id}/tags",
    response_model=ShipmentRead,
    responses=problem_responses(ShipmentNotFound),
)
async def replace_shipment_tags(
    shipment_id: uuid.UUID,
    body: TagsReplace,
    shipments: SellersShipments,
    response: Response,
) -> ShipmentRead:
    """Replace the shipment's tags with exactly these (lower-case slugs, at most 10)."""
    return _etag(await shipments.replace_tags(shipment_id, body.tags), response)


@coverage_router.get("", response_model=CoverageRead)
async def read_coverage(
    shipments: SellersReadingShipments,
    zip_code: Annotated[ZipCode, Query(description="The destination's zip code.")],
) -> CoverageRead:
    """Whether a shipment to this zip code can be created now, and if not, why.

    `served`: an approved delivery partner serves the zip code; `available`: one of them has
    room now. No partner is named. Unserved zip codes and full partners are what make
    `POST /shipments` answer 409 `no_partner_available` (its `reason` says which). With a test
    key, every zip code is served and available: test shipments go to your simulated partner.
    """
    return await shipments.coverage(zip_code)


@scans_router.post(
    "",
    response_model=ScanResults,
    responses=problem_responses(WrongAccountKind, PartnerSuspended),
)
async def record_scans(body: ScanBatch, shipments: PartnersShipments) -> ScanResults:
    """Upload up to 100 scans of your shipments at once, as a van without
    signal does when it reconnects.

    Each scan is a report as `PATCH /shipments/{id}` takes one, on the shipment with its
    `tracking_number`, named by your device's `scan_id`. Scans are applied in the order sent
    (per shipment), each on its own: one result per scan, in the order sent, `accepted`,
    `duplicate` (this `scan_id` was recorded for that shipment before: send a batch again
    safely) or `rejected` with the problem a single report would have got (a shipment not
    assigned to you is 404, a scan too old 422, …). The answer is 200 whatever the results;
    a batch that is malformed as a whole (more than 100 scans, a field of
    the wrong type) is 422 and records nothing.
    """
    return await shipments.record_scans(body)
