"""Webhook endpoints and the event feed, for sellers."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Text,
    cast,
    false,
    func,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.accounts.caller import Caller
from backend.db import utcnow, violated_constraint
from backend.errors import Conflict, DomainError, NotFound
from backend.pagination import after_last, decode_cursor, newest_first, split_page
from backend.rate_limit import FixedWindowLimiter
from backend.webhooks.events import WEBHOOK_TEST, EventPublisher
from backend.webhooks.models import Event, WebhookDelivery, WebhookEndpoint
from backend.webhooks.schemas import (
    EventPage,
    EventRead,
    WebhookDeliveryPage,
    WebhookDeliveryRead,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointRead,
    WebhookSecretRotation,
)
from backend.webhooks.webhooks import new_secret

MAX_ENDPOINTS_PER_SELLER = 10
# The unique index behind `WebhookUrlTaken` (backend/webhooks/models.py).
URL_INDEX = "ix_webhook_endpoints_seller_mode_url"

# The oldest transaction still running, as a number comparable to `Event.transaction_id`. Read
# afresh by every statement (Read Committed), so a statement never lists an event of a
# transaction that was still running when it began, nor anything after one.
_HORIZON = cast(cast(func.pg_snapshot_xmin(func.pg_current_snapshot()), Text), BigInteger)
# How long a feed request waits for committed events still behind the horizon, and how often it
# looks again; past that it answers without them (they come with the next request).
FEED_HORIZON_WAIT_SECONDS = 0.2
FEED_HORIZON_POLL_SECONDS = 0.01


class WebhookEndpointNotFound(NotFound):
    code = "webhook_endpoint_not_found"
    title = "Webhook endpoint not found"
    default_detail = "No webhook endpoint with this id belongs to this seller."


class TooManyWebhookEndpoints(Conflict):
    code = "too_many_webhook_endpoints"
    title = "Too many webhook endpoints"
    default_detail = (
        f"A seller may register at most {MAX_ENDPOINTS_PER_SELLER} live endpoints, and as many "
        "test endpoints with test keys."
    )


class WebhookEndpointDisabled(Conflict):
    code = "webhook_endpoint_disabled"
    title = "Webhook endpoint disabled"
    default_detail = (
        "This endpoint was disabled after failing for too long; enable it again with "
        "POST /seller/webhooks/{id}/enable once it answers."
    )


class WebhookUrlTaken(Conflict):
    code = "webhook_url_taken"
    title = "Webhook URL already registered"
    default_detail = (
        "You already have an endpoint with this URL (`endpoint_id`); each gets every event "
        "once. Use it, or delete it first."
    )

    def __init__(self, endpoint_id: uuid.UUID | None) -> None:
        # None only if two URLs of the seller's shared a digest (backend/webhooks/models.py).
        if endpoint_id is None:
            super().__init__()
        else:
            super().__init__(endpoint_id=str(endpoint_id))


class UnknownEvent(DomainError):
    status_code = 422
    code = "unknown_event"
    title = "Unknown event"
    default_detail = (
        "`after` must be the id of one of your events still in the feed, which keeps them "
        "EVENT_RETENTION_DAYS; start again without `after` if it is older."
    )


class WebhookService:
    def __init__(self, session: AsyncSession, events: EventPublisher) -> None:
        self._session = session
        self._events = events

    async def register(self, seller: Caller, body: WebhookEndpointCreate) -> WebhookEndpointCreated:
        """Store an endpoint whose URL has passed `check_destination`: the router checks it
        before the request's unit of work takes a connection, since a host lookup can be slow."""
        # One registration per seller at a time, so concurrent ones cannot pass the cap together.
        await self._session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"webhook-endpoints:{seller.account_id}"},
        )
        count = await self._session.scalar(select(func.count()).where(*_owned_by(seller)))
        if (count or 0) >= MAX_ENDPOINTS_PER_SELLER:
            raise TooManyWebhookEndpoints()
        endpoint = WebhookEndpoint(
            seller_id=seller.account_id,
            url=body.url,
            description=body.description,
            secret=new_secret(),
            livemode=seller.livemode,
        )
        try:
            # Added within a savepoint (which flushes whatever is pending as it begins), so
            # that a refused insert leaves the transaction usable.
            async with self._session.begin_nested():
                self._session.add(endpoint)
                await self._session.flush()
        except IntegrityError as error:
            if violated_constraint(error) != URL_INDEX:
                raise
            raise WebhookUrlTaken(await self._same_url(seller, body.url)) from None
        return WebhookEndpointCreated.model_validate(endpoint)

    async def enable(self, seller: Caller, endpoint_id: uuid.UUID) -> WebhookEndpointRead:
        """Deliver to the endpoint again, from the next event on: its run of failures starts
        over. Nothing missed while it was disabled is sent again (the feed has it)."""
        endpoint = await self._owned(seller, endpoint_id, for_update=True)
        if not endpoint.enabled:
            endpoint.enabled = True
            endpoint.disabled_reason = None
            endpoint.failing_since = None
            await self._session.flush()
        return WebhookEndpointRead.model_validate(endpoint)

    async def rotate_secret(
        self, seller: Caller, endpoint_id: uuid.UUID, body: WebhookSecretRotation
    ) -> WebhookEndpointCreated:
        """A new secret; the current one keeps signing beside it for `overlap_seconds`. A
        secret still in its overlap from an earlier rotation stops signing now."""
        # Locked: two rotations at once must not both retire the same secret, leaving one
        # caller holding a secret that never signs anything.
        endpoint = await self._owned(seller, endpoint_id, for_update=True)
        if body.overlap_seconds > 0:
            endpoint.previous_secret = endpoint.secret
            endpoint.previous_secret_expires_at = utcnow() + timedelta(seconds=body.overlap_seconds)
        else:
            endpoint.previous_secret = None
            endpoint.previous_secret_expires_at = None
        endpoint.secret = new_secret()
        await self._session.flush()
        return WebhookEndpointCreated.model_validate(endpoint)

    async def list_endpoints(self, seller: Caller) -> list[WebhookEndpointRead]:
        statement = (
            select(WebhookEndpoint)
            .where(*_owned_by(seller))
            .order_by(col(WebhookEndpoint.created_at))
        )
        endpoints = (await self._session.execute(statement)).scalars()
        return [WebhookEndpointRead.model_validate(endpoint) for endpoint in endpoints]

    async def delete(self, seller: Caller, endpoint_id: uuid.UUID) -> None:
        endpoint = await self._owned(seller, endpoint_id)
        await self._session.delete(endpoint)
        await self._session.flush()

    async def deliveries(
        self, seller: Caller, endpoint_id: uuid.UUID, *, limit: int, cursor: str | None
    ) -> WebhookDeliveryPage:
        endpoint = await self._owned(seller, endpoint_id)
        statement = select(WebhookDelivery).where(col(WebhookDelivery.endpoint_id) == endpoint_id)
        created_at, delivery_id = col(WebhookDelivery.created_at), col(WebhookDelivery.id)
        if cursor:
            statement = statement.where(after_last(created_at, delivery_id, *decode_cursor(cursor)))
        statement = statement.order_by(*newest_first(created_at, delivery_id)).limit(limit + 1)
        rows = list((await self._session.execute(statement)).scalars())
        items, next_cursor = split_page(rows, limit)
        return WebhookDeliveryPage(
            items=[
                WebhookDeliveryRead(**row.model_dump(), livemode=endpoint.livemode) for row in items
            ],
            next_cursor=next_cursor,
        )

    async def send_test(
        self, seller: Caller, endpoint_id: uuid.UUID, limiter: FixedWindowLimiter
    ) -> uuid.UUID:
        endpoint = await self._owned(seller, endpoint_id)
        if not endpoint.enabled:
            raise WebhookEndpointDisabled()
        # Counted per endpoint, once it is known to be the caller's: each send makes us POST to
        # a URL of the seller's choosing.
        await limiter.hit(str(endpoint.id))
        data: dict[str, Any] = {
            "message": "A test event from Shiptrack.",
            "endpoint_id": str(endpoint.id),
        }
        [event_id] = await self._events.publish(
            seller.account_id,
            [WEBHOOK_TEST],
            data,
            only_endpoint=endpoint.id,
            livemode=endpoint.livemode,
        )
        return event_id

    async def feed(self, seller: Caller, *, after: uuid.UUID | None, limit: int) -> EventPage:
        """The seller's events after `after`, in (transaction, position) order, up to the
        horizon: events of transactions older than every transaction still running. An event
        that commits later belongs to a transaction still running now, so it will come after
        whatever this page returns: a reader that follows `after` never skips one."""
        key = col(Event.transaction_id), col(Event.position)
        # The mode as a literal, so that a test key's feed can use the index of test events.
        mode = col(Event.livemode) == (true() if seller.livemode else false())
        statement = select(Event).where(col(Event.seller_id) == seller.account_id, mode)
        if after is not None:
            last = (
                await self._session.execute(
                    select(*key).where(
                        col(Event.id) == after, col(Event.seller_id) == seller.account_id, mode
                    )
                )
            ).first()
            if last is None:
                raise UnknownEvent()
            statement = statement.where(tuple_(*key) > tuple_(*last))
        page = statement.where(key[0] < _HORIZON).order_by(*key).limit(limit + 1)
        rows = list((await self._session.execute(page)).scalars())
        # Events committed but still behind the horizon (an older transaction, anywhere in the
        # database cluster, has not ended yet): usually a matter of milliseconds, so wait a
        # little for them rather than answer without.
        waited = 0.0
        while len(rows) <= limit and waited < FEED_HORIZON_WAIT_SECONDS:
            held_back = statement.where(key[0] >= _HORIZON).exists()
            if not await self._session.scalar(select(held_back)):
                break
            await asyncio.sleep(FEED_HORIZON_POLL_SECONDS)
            waited += FEED_HORIZON_POLL_SECONDS
            rows = list((await self._session.execute(page)).scalars())
        return EventPage(
            items=[EventRead.model_validate(row) for row in rows[:limit]],
            has_more=len(rows) > limit,
        )

    async def _owned(
        self, seller: Caller, endpoint_id: uuid.UUID, *, for_update: bool = False
    ) -> WebhookEndpoint:
        statement = select(WebhookEndpoint).where(
            col(WebhookEndpoint.id) == endpoint_id, *_owned_by(seller)
        )
        if for_update:
            statement = statement.with_for_update()
        endpoint = (await self._session.execute(statement)).scalars().first()
        if endpoint is None:
            raise WebhookEndpointNotFound()
        return endpoint

    async def _same_url(self, seller: Caller, url: str) -> uuid.UUID | None:
        statement = select(col(WebhookEndpoint.id)).where(
            *_owned_by(seller), col(WebhookEndpoint.url) == url
        )
        endpoint_id: uuid.UUID | None = await self._session.scalar(statement)
        return endpoint_id


def _owned_by(seller: Caller) -> tuple[ColumnElement[bool], ...]:
    """The caller's endpoints of its mode: a test key sees and registers test endpoints only."""
    return (
        col(WebhookEndpoint.seller_id) == seller.account_id,
        col(WebhookEndpoint.livemode) == seller.livemode,
    )
