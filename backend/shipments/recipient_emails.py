"""Emails to a shipment's recipient, queued in the outbox of the change that causes them (or,
for a test shipment, only recorded): every change that matters to them (product.md §12.5).

They carry the recipient's own data and the tracking link, nothing of anyone else's: never the
partner's note (a failure is told in FAILURE_WORDS), never the seller's or partner's contacts.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from backend.accounts.tokens import LinkTokens
from backend.outbox.outbox import enqueue_email, last_recorded_value, record_email
from backend.outbox.wording import human_day, human_moment
from backend.shipments.failures import FAILURE_WORDS, FailureReason
from backend.shipments.models import Shipment
from backend.shipments.public import REVIEW_LINK
from backend.shipments.views import tracking_url

# Values a template sees: stored as JSON in the outbox (or the recorded test email).
ContextValue = str | list[str]


def eta_moved_a_day(previous: datetime, current: datetime) -> bool:
    """Whether a new estimated delivery is worth telling the recipient: it moved by a day or
    more, earlier or later (product.md §12.5). A shift of hours is not news, even across
    midnight; the tracking page shows the new day at once."""
    return abs(current - previous) >= timedelta(days=1)


def _count(number: int, thing: str) -> str:
    """'1 failed attempt', '3 failed attempts'."""
    return f"{number} {thing}" if number == 1 else f"{number} {thing}s"


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

    def failed_attempt(
        self, shipment: Shipment, *, reason: FailureReason, attempts: int, attempts_left: int
    ) -> None:
        """A delivery attempt failed: why, in plain words (never the partner's note), and what
        happens next: another attempt, or the way back to the sender when none is left.
        `attempts` counts the failed ones so far, this one included."""
        if attempts_left > 0:
            what_next = (
                "The courier will try again, usually on the next working day "
                f"({_count(attempts_left, 'attempt')} left)."
            )
        else:
            what_next = "No attempts are left: the parcel will go back to the sender."
        self._queue(
            shipment,
            "failed_attempt",
            what_happened=FAILURE_WORDS[reason],
            attempt_text=_count(attempts, "failed attempt"),
            what_next=what_next,
        )

    def details_corrected(self, shipment: Shipment, *, not_before: datetime | None) -> None:
        """The seller changed the delivery details: where and to whom the parcel now goes, as
        stored now, sent to the recipient's address as stored now. `not_before` defers it when
        the seller is over its hourly budget of recipient emails."""
        city_line = " ".join(
            part for part in (shipment.destination_city, shipment.destination_zip) if part
        )
        address_lines = [line for line in (shipment.destination_address_line, city_line) if line]
        self._queue(
            shipment, "details_corrected", not_before=not_before, address_lines=address_lines
        )

    def cancelled(self, shipment: Shipment, *, seller_name: str) -> None:
        """The shipment was cancelled before the carrier had it: nothing will arrive."""
        self._queue(shipment, "cancelled", seller_name=seller_name)

    def returned(self, shipment: Shipment, *, reason: FailureReason | None, attempts: int) -> None:
        """The parcel is going back to its sender: after how many delivery attempts (when there
        were any) and the last one's reason in plain words (when known)."""
        self._queue(
            shipment,
            "returned",
            attempts_text=_count(attempts, "delivery attempt") if attempts >= 1 else "",
            last_attempt=FAILURE_WORDS[reason] if reason is not None else "",
        )

    def eta_moved(self, shipment: Shipment, *, previous: datetime) -> None:
        """The estimated delivery moved to another day, later or earlier than `previous`
        (the caller decides it is news: eta_moved_a_day)."""
        current = shipment.estimated_delivery
        self._queue(
            shipment,
            "eta_moved",
            estimated_delivery_day=human_day(current),
            previous_day=human_day(previous),
            direction="later" if current > previous else "earlier",
        )

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
        **context: ContextValue,
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
