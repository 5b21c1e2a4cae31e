"""Recording events and fanning them out to the seller's webhook endpoints, in the caller's
transaction: a change that rolls back leaves neither an event nor a delivery behind."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.db import utcnow
from backend.outbox.outbox import enqueue
from backend.webhooks.models import Event, WebhookEndpoint

WEBHOOK = "webhook"

SHIPMENT_CREATED = "shipment.created"
SHIPMENT_UPDATED = "shipment.updated"
SHIPMENT_DELIVERED = "shipment.delivered"
SHIPMENT_CANCELLED = "shipment.cancelled"
WEBHOOK_TEST = "webhook.test"

# One lock per seller, held to the end of the transaction: events of a seller get positions in
# commit order, so a feed reader that saw position N never later finds a smaller one appear.
_SERIALIZE_SELLER_EVENTS = select(
    func.pg_advisory_xact_lock(func.hashtextextended(bindparam("key"), 0))
)


class EventPublisher:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def publish(
        self,
        seller_id: uuid.UUID,
        types: list[str],
        data: dict[str, Any],
        *,
        shipment_id: uuid.UUID | None = None,
        only_endpoint: uuid.UUID | None = None,
    ) -> list[uuid.UUID]:
        """Record events and queue one webhook delivery per enabled endpoint and event; returns
        the events' ids. The rows are written at the session's next flush.

        Call it last in a transaction: the lock it takes is then held only until the commit.
        """
        session = self._session
        await session.execute(_SERIALIZE_SELLER_EVENTS, {"key": f"events:{seller_id}"})
        now = utcnow()
        events = [
            Event(
                seller_id=seller_id,
                shipment_id=shipment_id,
                type=event_type,
                data=data,
                created_at=now,
            )
            for event_type in types
        ]
        session.add_all(events)
        endpoints = select(col(WebhookEndpoint.id)).where(
            col(WebhookEndpoint.seller_id) == seller_id, col(WebhookEndpoint.enabled)
        )
        if only_endpoint is not None:
            endpoints = endpoints.where(col(WebhookEndpoint.id) == only_endpoint)
        deliveries = [
            {"endpoint_id": str(endpoint_id), "event_id": str(event.id)}
            for endpoint_id in (await session.scalars(endpoints))
            for event in events
        ]
        enqueue(session, WEBHOOK, deliveries, shipment_id=shipment_id)
        return [event.id for event in events]
