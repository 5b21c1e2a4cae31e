"""Public tracking: a JSON view and an HTML page, keyed by the unguessable tracking number.

Neither shows the recipient's name, email or phone, nor any internal id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from backend.errors import problem_responses
from backend.shipments.dependencies import ShipmentServiceDep
from backend.shipments.errors import TrackingNumberNotFound
from backend.shipments.schemas import TrackingView
from backend.shipments.status import PROGRESS_STEPS, TERMINAL, ShipmentStatus

router = APIRouter(tags=["Public tracking"])
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

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
    tracking_number: TrackingNumber, shipments: ShipmentServiceDep
) -> TrackingView:
    """Where a parcel is: status, ETA, destination city and zip, carrier and timeline.

    Public: anyone with the tracking number may look, so no personal data is included.
    """
    return await shipments.track(tracking_number)


@router.get("/t/{tracking_number}", response_class=HTMLResponse, include_in_schema=False)
async def tracking_page(
    request: Request, tracking_number: str, shipments: ShipmentServiceDep
) -> HTMLResponse:
    """The recipient's tracking page (server-rendered, no external assets)."""
    try:
        view = await shipments.track(tracking_number)
    except TrackingNumberNotFound:
        return templates.TemplateResponse(
            request,
            "tracking_not_found.html",
            {"tracking_number": tracking_number[:40]},
            status_code=404,
        )
    return templates.TemplateResponse(request, "tracking.html", page_context(view))


def page_context(view: TrackingView) -> dict[str, object]:
    """What the template needs beyond the view: labels and the progress steps."""
    reached = PROGRESS_STEPS.index(view.status) if view.status in PROGRESS_STEPS else -1
    steps = [
        {
            "label": STATUS_LABELS[step],
            "done": index <= reached,
            "current": index == reached,
        }
        for index, step in enumerate(PROGRESS_STEPS)
    ]
    return {
        "view": view,
        "status_label": STATUS_LABELS[view.status],
        "labels": STATUS_LABELS,
        "steps": steps,
        "is_final": view.status in TERMINAL,
        "stopped": view.status in (ShipmentStatus.cancelled, ShipmentStatus.returned),
        # Newest first reads best on a phone.
        "events": list(reversed(view.timeline)),
    }
