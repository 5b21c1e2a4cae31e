"""Recording events and fanning them out to the seller's webhook endpoints, in the caller's
transaction: a change that rolls back leaves neither an event nor a delivery behind."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import bindparam, func, insert, select

from backend.db import Database, Statement, json_text, table_of, utcnow
from backend.outbox.outbox import enqueue
from backend.webhooks.models import Event, WebhookEndpoint

WEBHOOK = "webhook"

SHIPMENT_CREATED = "shipment.created"
SHIPMENT_UPDATED = "shipment.updated"
SHIPMENT_DELIVERED = "shipment.delivered"
SHIPMENT_CANCELLED = "shipment.cancelled"
WEBHOOK_TEST = "webhook.test"

_events = table_of(Event)
_endpoints = table_of(WebhookEndpoint)

# One lock per seller, held to the end of the transaction: events of a seller get positions in
# commit order, so a feed reader that saw position N never later finds a smaller one appear.
_SERIALIZE_SELLER_EVENTS = Statement(
    select(func.pg_advisory_xact_lock(func.hashtextextended(bindparam("key"), 0)))
)
_RECORD_EVENT = Statement(
    insert(_events).values(
        id=bindparam("id"),
        seller_id=bindparam("seller_id"),
        shipment_id=bindparam("shipment_id"),
        type=bindparam("type"),
        data=bindparam("data"),
        created_at=bindparam("created_at"),
    )
)
_ENABLED_ENDPOINTS = Statement(
    select(_endpoints.c.id).where(
        _endpoints.c.seller_id == bindparam("seller_id"), _endpoints.c.enabled
    )
)
_ENABLED_ENDPOINT = Statement(
    select(_endpoints.c.id).where(
        _endpoints.c.seller_id == bindparam("seller_id"),
        _endpoints.c.enabled,
        _endpoints.c.id == bindparam("endpoint_id"),
    )
)


class EventPublisher:
    def __init__(self, database: Database) -> None:
        self._database = database

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
        database = self._database
        await database.execute(_SERIALIZE_SELLER_EVENTS, key=f"events:{seller_id}")
        now, data_text = utcnow(), json_text(data)
        event_ids = [uuid.uuid4() for _ in types]
        events = [
            {
                "id": event_id,
                "seller_id": seller_id,
                "shipment_id": shipment_id,
                "type": event_type,
                "data": data_text,
                "created_at": now,
            }
            for event_id, event_type in zip(event_ids, types, strict=True)
        ]
        await database.execute_many(_RECORD_EVENT, events)
        if only_endpoint is None:
            endpoints = await database.fetch_all(_ENABLED_ENDPOINTS, seller_id=seller_id)
        else:
            endpoints = await database.fetch_all(
                _ENABLED_ENDPOINT, seller_id=seller_id, endpoint_id=only_endpoint
            )
        deliveries = [
            {"endpoint_id": str(endpoint["id"]), "event_id": str(event_id)}
            for endpoint in endpoints
            for event_id in event_ids
        ]
        await enqueue(database, WEBHOOK, deliveries, shipment_id=shipment_id)
        return event_ids
