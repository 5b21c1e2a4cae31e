"""The recipient's side: tracking by number (no personal data) and the review after delivery.

Public routes: the caller proves nothing but the tracking number, or, for a review, the signed
link from the delivery email.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, raiseload, selectinload
from sqlmodel import col

from backend.accounts.errors import InvalidLinkToken
from backend.accounts.tokens import LinkTokens
from backend.shipments.errors import (
    ReviewAlreadyGiven,
    ShipmentNotDelivered,
    TrackingNumberNotFound,
)
from backend.shipments.models import Review, Shipment
from backend.shipments.schemas import (
    PublicDestination,
    PublicPartner,
    ReviewCreate,
    ReviewRead,
    TimelineEvent,
    TrackingView,
)
from backend.shipments.status import ShipmentStatus

# The purpose of the signed link in the delivery email (LinkTokens).
REVIEW_LINK = "review"


def tracking_url(public_base_url: str, tracking_number: str) -> str:
    """The recipient's tracking page (tracking_router's /t/{tracking_number})."""
    return f"{public_base_url}/t/{tracking_number}"


class PublicTracking:
    """Reads through the ORM. A public view shows the newest PUBLIC_TIMELINE_LENGTH events
    (`Shipment.recent_timeline`, loaded by selectin in a second query) and the total, never
    the whole timeline: two queries, whatever its length."""

    def __init__(self, session: AsyncSession, links: LinkTokens) -> None:
        self._session = session
        self._links = links

    async def shipment_id_for(self, tracking_number: str) -> uuid.UUID:
        shipment = await self._by_tracking_number(tracking_number, with_timeline=False)
        return shipment.id

    async def track(self, tracking_number: str) -> TrackingView:
        shipment = await self._by_tracking_number(tracking_number)
        return TrackingView(
            tracking_number=shipment.tracking_number,
            status=shipment.status,
            estimated_delivery=shipment.estimated_delivery,
            destination=PublicDestination(
                zip_code=shipment.destination_zip, city=shipment.destination_city
            ),
            partner=PublicPartner(name=shipment.partner.name),
            timeline=[TimelineEvent.model_validate(event) for event in shipment.recent_timeline],
            # Sequences are gapless from 1: the newest is the count.
            timeline_total=shipment.last_sequence,
        )

    async def review(self, tracking_number: str, body: ReviewCreate) -> ReviewRead:
        """The recipient's rating, with the signed link from the delivery email; once only."""
        shipment_id, _ = self._links.decode(body.token, REVIEW_LINK, "shipment", [])
        shipment = await self._by_tracking_number(tracking_number, with_timeline=False)
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
        self, tracking_number: str, *, with_timeline: bool = True
    ) -> Shipment:
        # The full timeline (`lazy="selectin"`) is never loaded here: it may hold hundreds of
        # events, and an anonymous caller sees the newest ones only.
        options = [
            joinedload(Shipment.partner),  # type: ignore[arg-type]
            raiseload(Shipment.timeline),  # type: ignore[arg-type]
        ]
        if with_timeline:
            options.append(selectinload(Shipment.recent_timeline))  # type: ignore[arg-type]
        statement = (
            select(Shipment)
            .where(col(Shipment.tracking_number) == tracking_number.strip().upper())
            .options(*options)
        )
        shipment = (await self._session.execute(statement)).scalars().first()
        if shipment is None:
            raise TrackingNumberNotFound()
        return shipment
