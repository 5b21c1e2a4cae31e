"""Recording events and fanning them out to the seller's webhook endpoints, in the caller's
transaction: a change that rolls back leaves neither an event nor a delivery behind."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, bindparam, select
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


def _enabled_endpoints(only_endpoint: bool) -> Select[uuid.UUID]:
    """The seller's enabled endpoints of the event's mode (or the one of them a test send is
    for): live events go to endpoints registered with live credentials, test events to those
    registered with a test key."""
    statement = select(col(WebhookEndpoint.id)).where(
        col(WebhookEndpoint.seller_id) == bindparam("seller_id"),
        col(WebhookEndpoint.livemode) == bindparam("livemode"),
        col(WebhookEndpoint.enabled),
    )
    if only_endpoint:
        statement = statement.where(col(WebhookEndpoint.id) == bindparam("endpoint_id"))
    return statement


_ENABLED_ENDPOINTS = {only: _enabled_endpoints(only) for only in (False, True)}


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
        livemode: bool = True,
    ) -> list[uuid.UUID]:
        """Record events and queue one webhook delivery per enabled endpoint and event; returns
        the events' ids. The rows are written at the session's next flush; the feed orders
        them by the transaction that writes them (`Event.transaction_id`), so no lock is taken.
        """
        session = self._session
        parameters: dict[str, Any] = {"seller_id": seller_id, "livemode": livemode}
        if only_endpoint is not None:
            parameters["endpoint_id"] = only_endpoint
        statement = _ENABLED_ENDPOINTS[only_endpoint is not None]
        endpoint_ids = list(await session.scalars(statement, parameters))
        now = utcnow()
        events = [
            Event(
                seller_id=seller_id,
                shipment_id=shipment_id,
                type=event_type,
                data=data,
                created_at=now,
                livemode=livemode,
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
