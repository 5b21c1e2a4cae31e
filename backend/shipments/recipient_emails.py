"""Emails to a shipment's recipient, queued in the outbox of the change that causes them (or,
for a test shipment, only recorded)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from backend.accounts.tokens import LinkTokens
from backend.outbox.outbox import enqueue_email, last_recorded_value, record_email
from backend.outbox.wording import human_moment
from backend.shipments.models import Shipment
from backend.shipments.public import REVIEW_LINK
from backend.shipments.views import tracking_url


class RecipientEmails:
    def __init__(
        self,
        session: AsyncSession,
        *,
        links: LinkTokens,
        public_base_url: str,
        review_link_ttl_seconds: int,
    ) -> None:
        self._session = session
        self._links = links
        self._public_base_url = public_base_url
        self._review_lifetime = timedelta(seconds=review_link_ttl_seconds)

    def created(
        self,
        shipment: Shipment,
        *,
        partner_name: str,
        seller_name: str,
        delivery_day: str,
        not_before: datetime | None,
    ) -> None:
        """The shipment is on its way: who sends it, who carries it, when it should arrive.

        `not_before` defers it when the seller is over its hourly budget of these emails."""
        self._queue(
            shipment,
            "shipment_created",
            not_before=not_before,
            partner_name=partner_name,
            seller_name=seller_name,
            estimated_delivery_day=delivery_day,
        )

    def delivery_code(self, shipment: Shipment, code: tuple[str, datetime]) -> None:
        """A new delivery code, which the partner asks for at the door."""
        verification_code, expires_at = code
        self._queue(
            shipment,
            "delivery_code",
            # Stored hashed on the shipment; in the outbox only until the email has gone.
            secret_fields=("verification_code",),
            verification_code=verification_code,
            expires_at_text=human_moment(expires_at),
        )

    def delivered(self, shipment: Shipment, *, partner_name: str) -> None:
        """The delivery notice, with the signed link to review the shipment."""
        token = self._links.issue(REVIEW_LINK, "shipment", shipment.id, self._review_lifetime)
        review_url = f"{self._page(shipment)}?review={token}"
        self._queue(shipment, "delivered", partner_name=partner_name, review_url=review_url)

    async def last_recorded_code(self, shipment: Shipment) -> str | None:
        """The delivery code in the newest email recorded for a test shipment: what its
        simulated recipient shows at the door."""
        return await last_recorded_value(
            self._session, shipment.id, "delivery_code", "verification_code"
        )

    def _queue(
        self,
        shipment: Shipment,
        template: str,
        *,
        secret_fields: tuple[str, ...] = (),
        not_before: datetime | None = None,
        **context: str,
    ) -> None:
        """Queue an email to the recipient, sent only if this change commits; a test
        shipment's is recorded instead, never sent."""
        context = {
            "recipient_name": shipment.recipient_name,
            "tracking_number": shipment.tracking_number,
            "tracking_url": self._page(shipment),
            "content": shipment.content,
            **context,
        }
        if not shipment.livemode:
            record_email(
                self._session,
                template,
                shipment.recipient_email,
                seller_id=shipment.seller_id,
                shipment_id=shipment.id,
                **context,
            )
            return
        enqueue_email(
            self._session,
            template,
            shipment.recipient_email,
            shipment_id=shipment.id,
            secret_fields=secret_fields,
            not_before=not_before,
            **context,
        )

    def _page(self, shipment: Shipment) -> str:
        return tracking_url(self._public_base_url, shipment.tracking_number)
