"""A seller's test data: the emails its test shipments recorded, and clearing all of it."""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import CursorResult, delete, false, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.outbox.email import EmailRenderer
from backend.outbox.models import RecordedEmail
from backend.pagination import after_last, decode_cursor, newest_first, split_page
from backend.shipments.models import Shipment
from backend.testmode.schemas import ClearedTestData, RecordedEmailPage, RecordedEmailRead
from backend.webhooks.models import Event, WebhookEndpoint

# Recorded emails are never sent; the address they name as sender is only shown.
_SENDER = "Shiptrack test mode <test-mode@shiptrack.invalid>"


class SellerTestData:
    def __init__(self, session: AsyncSession, seller_id: uuid.UUID, renderer: EmailRenderer):
        self._session = session
        self._seller_id = seller_id
        self._renderer = renderer

    async def emails(self, *, limit: int, cursor: str | None) -> RecordedEmailPage:
        """The seller's recorded emails, newest first, rendered as they would have been sent."""
        key = col(RecordedEmail.created_at), col(RecordedEmail.id)
        statement = select(RecordedEmail).where(col(RecordedEmail.seller_id) == self._seller_id)
        if cursor:
            statement = statement.where(after_last(*key, *decode_cursor(cursor)))
        statement = statement.order_by(*newest_first(*key)).limit(limit + 1)
        rows = list((await self._session.execute(statement)).scalars())
        items, next_cursor = split_page(rows, limit)
        return RecordedEmailPage(items=[self._read(row) for row in items], next_cursor=next_cursor)

    def _read(self, email: RecordedEmail) -> RecordedEmailRead:
        message = self._renderer.render(
            email.template,
            email.to,
            email.context,
            sender=_SENDER,
            message_id=email.id,
            written_at=email.created_at,
        )
        text, html = (message.get_body(preferencelist=(kind,)) for kind in ("plain", "html"))
        # The renderer always writes both parts.
        assert text is not None
        assert html is not None
        return RecordedEmailRead(
            id=email.id,
            shipment_id=email.shipment_id,
            to=email.to,
            subject=str(message["Subject"]),
            text=text.get_content(),
            html=html.get_content(),
            created_at=email.created_at,
        )

    async def clear(self) -> ClearedTestData:
        """Delete the seller's test shipments (with their events, tag links, reviews, recorded
        emails and idempotency keys, which go with them), test feed events (with their
        deliveries) and test webhook endpoints. Live data is not touched: every statement names
        test rows only. Test data written while this runs may outlive it: clear again."""
        seller = self._seller_id
        emails = await self._delete(RecordedEmail, col(RecordedEmail.seller_id) == seller)
        events = await self._delete(
            Event, col(Event.seller_id) == seller, col(Event.livemode) == false()
        )
        endpoints = await self._delete(
            WebhookEndpoint,
            col(WebhookEndpoint.seller_id) == seller,
            col(WebhookEndpoint.livemode) == false(),
        )
        shipments = await self._delete(
            Shipment, col(Shipment.seller_id) == seller, col(Shipment.livemode) == false()
        )
        return ClearedTestData(
            shipments=shipments, events=events, webhook_endpoints=endpoints, emails=emails
        )

    async def _delete(self, model: type[Any], *conditions: Any) -> int:
        result = await self._session.execute(delete(model).where(*conditions))
        return cast(CursorResult[Any], result).rowcount
