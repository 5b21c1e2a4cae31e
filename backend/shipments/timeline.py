"""A shipment's timeline events: what each says, when it happened, and the failed delivery
attempts a partner's report may be (product.md §5, §12.1, §12.2). Pure rules: no database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from backend.shipments.errors import FailureReasonNotAllowed, FailureReasonRequired
from backend.shipments.failures import FAILURE_WORDS, RETURNS_AT_ONCE, FailureReason
from backend.shipments.models import Shipment, ShipmentEvent
from backend.shipments.schemas import LocationIn, ShipmentUpdate
from backend.shipments.status import ShipmentStatus

EVENT_DESCRIPTIONS = {
    ShipmentStatus.placed: "Shipment created",
    ShipmentStatus.in_transit: "In transit",
    ShipmentStatus.out_for_delivery: "Out for delivery",
    ShipmentStatus.delivered: "Delivered",
    ShipmentStatus.cancelled: "Cancelled by the sender",
    ShipmentStatus.returned: "Returned to the sender",
}


@dataclass(frozen=True, slots=True)
class EventDetails:
    """What a timeline event says beside its status and sequence."""

    # Public words: the status's own, the partner's note, or a failed attempt's reason.
    description: str
    occurred_at: datetime | None = None  # None: when it is recorded
    location: LocationIn | None = None
    failure_reason: FailureReason | None = None
    note: str | None = None  # the partner's private note on a failed attempt
    scan_id: str | None = None


def time_order(event: ShipmentEvent) -> tuple[datetime, int]:
    """A timeline's order: by when events happened, then in recording order (the order
    `Shipment.timeline` loads them in)."""
    return event.occurred_at, event.sequence


def new_event(shipment: Shipment, details: EventDetails, status: ShipmentStatus) -> ShipmentEvent:
    """The timeline event numbered the shipment's `last_sequence`."""
    location = details.location
    reason = details.failure_reason
    return ShipmentEvent(
        shipment_id=shipment.id,
        sequence=shipment.last_sequence,
        status=status,
        location_zip=location.zip_code if location else None,
        location_city=location.city if location else None,
        location_lat=location.lat if location else None,
        location_lon=location.lon if location else None,
        description=details.description,
        failure_reason=reason.value if reason is not None else None,
        note=details.note,
        scan_id=details.scan_id,
        occurred_at=details.occurred_at or shipment.updated_at,
        created_at=shipment.updated_at,
        livemode=shipment.livemode,
    )


def failed_attempt_reason(shipment: Shipment, change: ShipmentUpdate) -> FailureReason | None:
    """The reason of the failed delivery attempt this report is, if it is one (product.md
    §12.1); 422 when a reason is missing or out of place. The schema has already checked that
    a reason comes with in_transit or returned, and `other` with a note."""
    reason = change.failure_reason
    out_for_delivery = shipment.status is ShipmentStatus.out_for_delivery
    if reason is None:
        if out_for_delivery and change.status is ShipmentStatus.in_transit:
            raise FailureReasonRequired()
        return None
    if not out_for_delivery:
        raise FailureReasonNotAllowed(
            f"This shipment is {shipment.status.value}: only an out-for-delivery shipment has "
            "delivery attempts that can fail."
        )
    if change.status is ShipmentStatus.returned and reason not in RETURNS_AT_ONCE:
        raise FailureReasonNotAllowed(
            f"`{reason.value}` does not send a parcel straight back; report it with status "
            "in_transit (another attempt follows). Only refused and address_not_found return "
            "at once."
        )
    return reason


def report_details(
    change: ShipmentUpdate,
    failure: FailureReason | None,
    occurred_at: datetime | None,
    scan_id: str | None,
) -> EventDetails:
    """The timeline event of a partner's report. A failed attempt's public words are its
    reason's; the partner's note on it stays private (it may name people at the door)."""
    if failure is not None:
        description = FAILURE_WORDS[failure]
        if change.status is ShipmentStatus.returned:
            description += ": returned to the sender"
        note = change.note
    else:
        description = change.note or describe_report(change)
        note = None
    return EventDetails(
        description=description,
        occurred_at=occurred_at,
        location=change.place,
        failure_reason=failure,
        note=note,
        scan_id=scan_id,
    )


def describe_report(change: ShipmentUpdate) -> str:
    """A timeline line for a report without a note: its status's, or what it changed."""
    if change.status is not None:
        return EVENT_DESCRIPTIONS[change.status]
    if change.estimated_delivery is not None:
        return "New delivery estimate"
    return "Location update"


def status_at(timeline: list[ShipmentEvent], moment: datetime) -> ShipmentStatus:
    """The status a shipment had at `moment`: that of the last event of the (time-ordered)
    `timeline` that happened by then, or its first, `placed`, which no event predates."""
    happened = [event for event in timeline if event.occurred_at <= moment]
    return (happened[-1] if happened else timeline[0]).status
