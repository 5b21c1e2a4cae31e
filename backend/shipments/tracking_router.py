"""Public tracking: a JSON view and an HTML page, keyed by the unguessable tracking number.

Neither shows the recipient's name, email or phone, nor any internal id.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse

from backend.accounts.errors import InvalidLinkToken
from backend.db import UnitOfWorkRoute, utcnow
from backend.errors import problem_responses
from backend.outbox.wording import human_day, human_moment, human_time, relative_days
from backend.pages import PAGE_HEADERS, page_templates
from backend.shipments.dependencies import PublicTrackingDep
from backend.shipments.errors import (
    ReviewAlreadyGiven,
    ShipmentNotDelivered,
    TrackingNumberNotFound,
)
from backend.shipments.live import SSE_RESPONSES, LastEventId, open_timeline_stream
from backend.shipments.schemas import (
    PublicTimelineEvent,
    ReviewCreate,
    ReviewRead,
    TrackingView,
)
from backend.shipments.status import PROGRESS_STEPS, TERMINAL, ShipmentStatus

router = APIRouter(tags=["Public tracking"], route_class=UnitOfWorkRoute)
# Files the tracking page loads; no database involved.
assets_router = APIRouter(include_in_schema=False)
templates = page_templates(Path(__file__).parent / "templates")
# For the reference: how each page begins.
_PAGE_HEAD = '<!doctype html>\n<html lang="en">\n<head>\n  <meta charset="utf-8">\n  ...\n'
_PAGE_EXAMPLE = _PAGE_HEAD + "  <title>Out for delivery · 7KQ2M9XHR4TBWC · Shiptrack</title>\n..."
_NOT_FOUND_EXAMPLE = _PAGE_HEAD + "  <title>Tracking number not found · Shiptrack</title>\n..."

TRACKING_SCRIPT = Path(__file__).parent / "static" / "tracking.js"
FAVICON = Path(__file__).parent / "static" / "favicon.svg"
# The icon's URL never carries a version, so a week: long enough to spare the requests, short
# enough that a new icon reaches everyone.
FAVICON_HEADERS = {
    "Cache-Control": "public, max-age=604800",
    # Opened on its own, an SVG is a document: this one has nothing to run or fetch.
    "Content-Security-Policy": "default-src 'none'",
}

TRACKING_NUMBER_FORMAT = re.compile(r"[A-Za-z0-9]{6,20}")
TrackingNumber = Annotated[
    str,
    PathParam(
        min_length=6,
        max_length=20,
        pattern=r"^[A-Za-z0-9]+$",
        description="The tracking number from the seller or the recipient's email.",
        examples=["7KQ2M9XHR4TBWC"],
    ),
]

STATUS_LABELS = {
    ShipmentStatus.placed: "Order placed",
    ShipmentStatus.in_transit: "In transit",
    ShipmentStatus.out_for_delivery: "Out for delivery",
    ShipmentStatus.delivered: "Delivered",
    ShipmentStatus.cancelled: "Cancelled",
    ShipmentStatus.returned: "Returned to sender",
}


@router.get(
    "/track/{tracking_number}",
    response_model=TrackingView,
    responses=problem_responses(TrackingNumberNotFound),
)
async def track_shipment(
    tracking_number: TrackingNumber, shipments: PublicTrackingDep
) -> TrackingView:
    """Where a parcel is: status, ETA, destination city and zip, carrier and timeline.

    Public: anyone with the tracking number may look, so no personal data is included. The
    timeline holds the newest 50 events; `timeline_total` says how many there are in all.
    """
    return await shipments.track(tracking_number)


@router.post(
    "/track/{tracking_number}/review",
    status_code=status.HTTP_201_CREATED,
    response_model=ReviewRead,
    responses=problem_responses(
        TrackingNumberNotFound, InvalidLinkToken, ShipmentNotDelivered, ReviewAlreadyGiven
    ),
)
async def review_shipment(
    tracking_number: TrackingNumber, body: ReviewCreate, shipments: PublicTrackingDep
) -> ReviewRead:
    """Rate a delivered shipment from 1 to 5, with an optional comment. Needs the `token` from
    the link in the delivery email; each shipment can be reviewed once. The seller sees the
    review on the shipment."""
    return await shipments.review(tracking_number, body)


@router.get(
    "/track/{tracking_number}/stream",
    response_class=StreamingResponse,
    responses={**SSE_RESPONSES, **problem_responses(TrackingNumberNotFound)},
)
async def stream_tracking(
    request: Request,
    tracking_number: TrackingNumber,
    shipments: PublicTrackingDep,
    last_event_id: LastEventId = None,
) -> Response:
    """The public timeline as it grows (Server-Sent Events): what the tracking page listens to.

    Carries only the public timeline fields; `Last-Event-ID` resumes without gaps. Open streams
    are capped per client address (429) and per server (503).
    """
    shipment_id = await shipments.shipment_id_for(tracking_number)
    return await open_timeline_stream(request, shipment_id, last_event_id or 0, authenticated=False)


@router.get(
    "/t/{tracking_number}",
    response_class=HTMLResponse,
    summary="The recipient's tracking page",
    responses={
        200: {
            "description": "The page (HTML): status, progress, estimated delivery, timeline.",
            "content": {"text/html": {"schema": {"type": "string"}, "example": _PAGE_EXAMPLE}},
        },
        404: {
            "description": "No shipment has this tracking number: a page that says so (HTML).",
            "content": {"text/html": {"schema": {"type": "string"}, "example": _NOT_FOUND_EXAMPLE}},
        },
    },
)
async def tracking_page(
    request: Request,
    tracking_number: str,
    shipments: PublicTrackingDep,
    review: Annotated[str | None, Query(max_length=2000)] = None,
) -> HTMLResponse:
    """The page the recipient's emails link to: server-rendered HTML, no external assets,
    the public fields only (what `GET /track/{tracking_number}` returns). With `review` (the
    token in the delivery email's link) a delivered shipment's page offers the review form."""
    try:
        # Checked like the JSON route's parameter: anything else cannot be a tracking number.
        if not TRACKING_NUMBER_FORMAT.fullmatch(tracking_number):
            raise TrackingNumberNotFound()
        view = await shipments.track(tracking_number)
    except TrackingNumberNotFound:
        return templates.TemplateResponse(
            request,
            "tracking_not_found.html",
            {"tracking_number": tracking_number[:40]},
            status_code=404,
            headers=PAGE_HEADERS,
        )
    context = page_context(view)
    # The link in the delivery email: the page offers the review form (the API checks the token).
    context["review_token"] = review if view.status is ShipmentStatus.delivered else None
    return templates.TemplateResponse(request, "tracking.html", context, headers=PAGE_HEADERS)


@assets_router.get("/assets/tracking.js")
async def tracking_page_script() -> FileResponse:
    """The tracking page's script: a file, so that the page's CSP allows no inline script."""
    return FileResponse(
        TRACKING_SCRIPT,
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=3600"},
    )


# Also where browsers look when no page names an icon (a JSON response opened in a tab): an
# SVG, which they read by its content type whatever the name.
@assets_router.get("/favicon.ico")
@assets_router.get("/assets/favicon.svg")
async def favicon() -> FileResponse:
    """The pages' icon (linked from the shared layout): served here, never from another site."""
    return FileResponse(FAVICON, media_type="image/svg+xml", headers=FAVICON_HEADERS)


def page_context(view: TrackingView, now: datetime | None = None) -> dict[str, object]:
    """What the template needs beyond the view: labels, progress steps and dates in words.

    Dates are written in UTC, each in a `<time>` with its exact moment: the page's script
    rewrites them in the reader's time zone, and without it the page says they are UTC.
    """
    today = (now or utcnow()).astimezone(UTC).date()
    reached = PROGRESS_STEPS.index(view.status) if view.status in PROGRESS_STEPS else -1
    steps = [
        {
            "number": index + 1,
            "label": STATUS_LABELS[step],
            "done": index <= reached,
            "current": index == reached,
        }
        for index, step in enumerate(PROGRESS_STEPS)
    ]
    eta = view.estimated_delivery.astimezone(UTC)
    eta_in_days = (eta.date() - today).days
    delivered_at = next(
        (e.occurred_at for e in reversed(view.timeline) if e.status is ShipmentStatus.delivered),
        None,
    )
    # Newest first reads best on a phone.
    events = [
        {
            "description": event.description or STATUS_LABELS[event.status],
            "status_label": STATUS_LABELS[event.status],
            "status": event.status.value,
            "place": _place(event),
            "when": _moment(event.occurred_at),
        }
        for event in reversed(view.timeline)
    ]
    return {
        "view": view,
        "status": view.status.value,
        "status_label": STATUS_LABELS[view.status],
        "steps": steps,
        "step_total": len(PROGRESS_STEPS),
        "is_final": view.status in TERMINAL,
        "stopped": view.status in (ShipmentStatus.cancelled, ShipmentStatus.returned),
        "eta": {
            "iso": eta.isoformat(),
            "date": human_day(eta, today=today),
            "relative": relative_days(eta_in_days),
            "late": eta_in_days < 0,
        },
        "delivered_at": _delivered(delivered_at, today) if delivered_at is not None else None,
        "events": events,
        "earlier_events": view.timeline_total - len(view.timeline),
    }


def _place(event: PublicTimelineEvent) -> str | None:
    """Where an event happened, as a reader names it: "Boston 02110", "ZIP 02110", "Boston"."""
    location = event.location
    if location is None or (location.city is None and location.zip_code is None):
        return None
    if location.city is None:
        return f"ZIP {location.zip_code}"
    return " ".join(part for part in (location.city, location.zip_code) if part)


def _moment(moment: datetime) -> dict[str, str]:
    moment = moment.astimezone(UTC)
    return {"iso": moment.isoformat(), "text": human_moment(moment, abbreviated=True)}


def _delivered(moment: datetime, today: date) -> dict[str, str]:
    moment = moment.astimezone(UTC)
    return {
        "iso": moment.isoformat(),
        "day": human_day(moment, today=today),
        "time": human_time(moment),
        "relative": relative_days((moment.date() - today).days),
    }
