"""The recipient's side: tracking by number (no personal data) and the review after delivery.

Public routes: the caller proves nothing but the tracking number, or, for a review, the signed
link from the delivery email.
"""

from __future__ import annotations

import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.accounts.errors import InvalidLinkToken
from backend.accounts.tokens import LinkTokens
from backend.shipments.errors import (
    ReviewAlreadyGiven,
    ShipmentNotDelivered,
    TrackingNumberNotFound,
)
from backend.shipments.models import Review, Shipment
from backend.shipments.repository import ShipmentRepository
from backend.shipments.schemas import (
    PublicDestination,
    PublicPartner,
    ReviewCreate,
    ReviewRead,
    TrackingView,
)
from backend.shipments.status import ShipmentStatus
from backend.shipments.views import public_timeline_view

# The purpose of the signed link in the delivery email (LinkTokens).
REVIEW_LINK = "review"


class PublicTracking:
    """What anyone with a tracking number may read. A public view shows the newest
    PUBLIC_TIMELINE_LENGTH events (`Shipment.recent_timeline`, loaded by selectin in a second
    query) and the total, never the whole timeline: two queries, whatever its length. Nothing
    personal is loaded at all: neither the recipient's contact nor the delivery code."""

    def __init__(self, session: AsyncSession, links: LinkTokens) -> None:
        self._session = session
        self._shipments = ShipmentRepository(session)
        self._links = links

    async def shipment_id_for(self, tracking_number: str) -> uuid.UUID:
        shipment, _ = await self._by_tracking_number(tracking_number, recent_events=False)
        return shipment.id

    async def track(self, tracking_number: str) -> TrackingView:
        shipment, partner_name = await self._by_tracking_number(tracking_number)
        return TrackingView.model_construct(
            tracking_number=shipment.tracking_number,
            status=shipment.status,
            estimated_delivery=shipment.estimated_delivery,
            destination=PublicDestination.model_construct(
                zip_code=shipment.destination_zip, city=shipment.destination_city
            ),
            partner=PublicPartner.model_construct(name=partner_name),
            timeline=public_timeline_view(shipment.recent_timeline),
            # Sequences are gapless from 1: the newest is the count.
            timeline_total=shipment.last_sequence,
            livemode=shipment.livemode,
        )

    async def review(self, tracking_number: str, body: ReviewCreate) -> ReviewRead:
        """The recipient's rating, with the signed link from the delivery email; once only."""
        shipment_id, _ = self._links.decode(body.token, REVIEW_LINK, "shipment", [])
        shipment, _ = await self._by_tracking_number(tracking_number, recent_events=False)
        if shipment.id != shipment_id:
            raise InvalidLinkToken()
        if shipment.status is not ShipmentStatus.delivered:
            raise ShipmentNotDelivered()
        review = Review(shipment_id=shipment.id, rating=body.rating, comment=body.comment)
        self._session.add(review)
        try:
            # A savepoint: a second review is refused by the unique constraint, and the
            # request's transaction stays usable.
            async with self._session.begin_nested():
                await self._session.flush()
        except IntegrityError:
            raise ReviewAlreadyGiven() from None
        return ReviewRead.model_validate(review)

    async def _by_tracking_number(
        self, tracking_number: str, *, recent_events: bool = True
    ) -> tuple[Shipment, str]:
        found = await self._shipments.by_tracking_number(
            tracking_number.strip().upper(), recent_events=recent_events
        )
        if found is None:
            raise TrackingNumberNotFound()
        return found
