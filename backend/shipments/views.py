"""Shipments as the API shows them, built from the loaded entities.

Built with `model_construct`: every value comes from the database or from a change the service
has just validated, so validating it again would only spend a read's time (pydantic's validation
of a shipment with its timeline costs about as much as loading it).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from backend.db import utcnow
from backend.shipments.failures import FailureReason
from backend.shipments.models import Review, Shipment, ShipmentEvent
from backend.shipments.repository import LoadedShipment
from backend.shipments.schemas import (
    DestinationRead,
    EventLocation,
    PartnerSummary,
    PublicTimelineEvent,
    RecipientRead,
    ReviewRead,
    ShipmentListItem,
    ShipmentRead,
    TimelineEvent,
)
from backend.shipments.status import TERMINAL


def tracking_url(public_base_url: str, tracking_number: str) -> str:
    """The recipient's tracking page (tracking_router's /t/{tracking_number})."""
    return f"{public_base_url}/t/{tracking_number}"


class ShipmentViews:
    def __init__(self, public_base_url: str, *, partner_pii_days: int) -> None:
        self._public_base_url = public_base_url
        self._pii_retention = timedelta(days=partner_pii_days)

    def view(self, loaded: LoadedShipment, *, for_partner: bool) -> ShipmentRead:
        """The shipment as its seller, or (`for_partner`) its partner, sees it."""
        return ShipmentRead.model_construct(**self._fields_with_timeline(loaded, for_partner))

    def list_item(
        self, loaded: LoadedShipment, *, for_partner: bool, with_timeline: bool
    ) -> ShipmentListItem:
        """The shipment in a list: its view, with its timeline or (loaded without one) null."""
        if with_timeline:
            fields = self._fields_with_timeline(loaded, for_partner)
        else:
            # Loaded without the timeline: a partner's page loads the newest event instead, for
            # when the shipment ended. A seller's view never needs it.
            newest = loaded.shipment.last_event if for_partner else None
            fields = {**self._fields(loaded, for_partner, newest), "timeline": None}
        return ShipmentListItem.model_construct(**fields)

    def _fields_with_timeline(self, loaded: LoadedShipment, for_partner: bool) -> dict[str, Any]:
        """A view's fields with the loaded timeline, whose newest event dates a partner's view."""
        timeline = loaded.shipment.timeline
        newest = max(timeline, key=lambda event: event.sequence, default=None)
        fields = self._fields(loaded, for_partner, newest)
        return {**fields, "timeline": timeline_view(timeline)}

    def _fields(
        self, loaded: LoadedShipment, for_partner: bool, newest_event: ShipmentEvent | None
    ) -> dict[str, Any]:
        """Everything a view shows but the timeline. `newest_event` dates a partner's view."""
        shipment = loaded.shipment
        redacted = for_partner and self._past_pii_retention(shipment, newest_event)
        return {
            "id": shipment.id,
            "tracking_number": shipment.tracking_number,
            "status": shipment.status,
            "content": shipment.content,
            "weight_kg": shipment.weight_kg,
            "destination": DestinationRead.model_construct(
                zip_code=shipment.destination_zip,
                address_line=None if redacted else shipment.destination_address_line,
                city=shipment.destination_city,
            ),
            "recipient": RecipientRead.model_construct(
                name=None if redacted else shipment.recipient_name,
                email=None if redacted else shipment.recipient_email,
                phone=None if redacted else shipment.recipient_phone,
            ),
            "tags": loaded.tags,
            "reference": shipment.reference,
            "seller_id": shipment.seller_id,
            "partner": PartnerSummary.model_construct(
                id=shipment.partner_id, name=loaded.partner_name
            ),
            "estimated_delivery": shipment.estimated_delivery,
            "version": shipment.version,
            "created_at": shipment.created_at,
            "updated_at": shipment.updated_at,
            "tracking_url": tracking_url(self._public_base_url, shipment.tracking_number),
            "recipient_redacted": redacted,
            "review": _review(shipment.review),
            "livemode": shipment.livemode,
            "attempts": shipment.delivery_attempts,
        }

    def _past_pii_retention(self, shipment: Shipment, newest_event: ShipmentEvent | None) -> bool:
        """A partner keeps the recipient's contact fields for PARTNER_PII_DAYS after the
        shipment ends (product.md §4): from its terminal event, always its newest recorded."""
        if shipment.status not in TERMINAL or newest_event is None:
            return False
        return newest_event.created_at < utcnow() - self._pii_retention


def timeline_view(events: list[ShipmentEvent]) -> list[TimelineEvent]:
    """The seller's and the partner's timeline, every field, in the events' order: by when each
    happened (`Shipment.timeline`, loaded so and kept so by ShipmentService._move)."""
    return [
        TimelineEvent.model_construct(**_public_fields(event, exact=True), note=event.note)
        for event in events
    ]


def public_timeline_view(events: list[ShipmentEvent]) -> list[PublicTimelineEvent]:
    """The timeline anyone with the tracking number sees: no notes, no coordinates."""
    return [
        PublicTimelineEvent.model_construct(**_public_fields(event, exact=False))
        for event in events
    ]


def _public_fields(event: ShipmentEvent, *, exact: bool) -> dict[str, Any]:
    has_place = event.location_zip or event.location_city or event.location_lat is not None
    location = (
        EventLocation.model_construct(
            zip_code=event.location_zip,
            city=event.location_city,
            lat=event.location_lat if exact else None,
            lon=event.location_lon if exact else None,
        )
        if has_place
        else None
    )
    reason = event.failure_reason
    return {
        "sequence": event.sequence,
        "status": event.status,
        "occurred_at": event.occurred_at,
        "location_zip": event.location_zip,
        "location": location,
        "failure_reason": FailureReason(reason) if reason is not None else None,
        "description": event.description,
        "created_at": event.created_at,
        "livemode": event.livemode,
    }


def _review(review: Review | None) -> ReviewRead | None:
    if review is None:
        return None
    return ReviewRead.model_construct(
        rating=review.rating, comment=review.comment, created_at=review.created_at
    )
