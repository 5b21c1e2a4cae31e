"""Recording events and fanning them out to the seller's webhook endpoints, in the caller's
transaction: a change that rolls back leaves neither an event nor a delivery behind."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, select
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
_SERIALIZED_SELLER = select(
    func.pg_advisory_xact_lock(func.hashtextextended(bindparam("key"), 0)).label("locked")
).subquery("serialized")


def _lock_and_find_endpoints(only_endpoint: bool) -> Select[uuid.UUID]:
    """The seller's lock and its enabled endpoints in one round trip: the lock's one-row
    subquery, outer-joined to the endpoints, so the lock is taken even when there are none
    (the row then holds NULL)."""
    endpoint = and_(
        col(WebhookEndpoint.seller_id) == bindparam("seller_id"), col(WebhookEndpoint.enabled)
    )
    if only_endpoint:
        endpoint = and_(endpoint, col(WebhookEndpoint.id) == bindparam("endpoint_id"))
    return select(col(WebhookEndpoint.id)).select_from(
        _SERIALIZED_SELLER.outerjoin(WebhookEndpoint, endpoint)
    )


_LOCK_AND_FIND_ENDPOINTS = {only: _lock_and_find_endpoints(only) for only in (False, True)}


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
        parameters = {"key": f"events:{seller_id}", "seller_id": seller_id}
        if only_endpoint is not None:
            parameters["endpoint_id"] = only_endpoint
        statement = _LOCK_AND_FIND_ENDPOINTS[only_endpoint is not None]
        endpoint_ids = [found for found in await session.scalars(statement, parameters) if found]
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
        deliveries = [
            {"endpoint_id": str(endpoint_id), "event_id": str(event.id)}
            for endpoint_id in endpoint_ids
            for event in events
        ]
        enqueue(session, WEBHOOK, deliveries, shipment_id=shipment_id)
        return [event.id for event in events]
