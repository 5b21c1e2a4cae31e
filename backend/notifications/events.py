"""Recording events and fanning them out to the seller's webhook endpoints, in the caller's
transaction: a change that rolls back leaves neither an event nor a delivery behind."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.db import table_of, utcnow
from backend.notifications.models import Event, OutboxMessage, WebhookEndpoint

WEBHOOK = "webhook"

SHIPMENT_CREATED = "shipment.created"
SHIPMENT_UPDATED = "shipment.updated"
SHIPMENT_DELIVERED = "shipment.delivered"
SHIPMENT_CANCELLED = "shipment.cancelled"
WEBHOOK_TEST = "webhook.test"

# One lock per seller, held to the end of the transaction: events of a seller get positions in
# commit order, so a feed reader that saw position N never later finds a smaller one appear.
_SERIALIZE_SELLER_EVENTS = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


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
        the events' ids.

        Call it last in a transaction: the lock it takes is then held only until the commit.
        """
        await self._session.execute(_SERIALIZE_SELLER_EVENTS, {"key": f"events:{seller_id}"})
        now = utcnow()
        event_ids = [uuid.uuid4() for _ in types]
        rows = [
            {
                "id": event_id,
                "seller_id": seller_id,
                "shipment_id": shipment_id,
                "type": event_type,
                "data": data,
                "created_at": now,
            }
            for event_id, event_type in zip(event_ids, types, strict=True)
        ]
        # A Core insert: every change records events, and the ORM's unit of work for objects
        # nobody reads again cost more than the insert itself.
        await self._session.execute(insert(table_of(Event)), rows)
        endpoints = select(col(WebhookEndpoint.id)).where(
            col(WebhookEndpoint.seller_id) == seller_id, col(WebhookEndpoint.enabled)
        )
        if only_endpoint is not None:
            endpoints = endpoints.where(col(WebhookEndpoint.id) == only_endpoint)
        for endpoint_id in (await self._session.execute(endpoints)).scalars():
            self._session.add_all(
                OutboxMessage(
                    kind=WEBHOOK,
                    shipment_id=shipment_id,
                    payload={"endpoint_id": str(endpoint_id), "event_id": str(event_id)},
                )
                for event_id in event_ids
            )
        return event_ids
