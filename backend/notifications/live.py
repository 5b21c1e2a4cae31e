"""Live updates: timeline events as Server-Sent Events, fanned out through Redis pub/sub so a
client connected to any replica hears about changes made on any other.

A stream subscribes first and reads what it missed from PostgreSQL second, so nothing falls in
between; events are deduplicated by their sequence, which is also the SSE `id`. A client that
reconnects with `Last-Event-ID` gets exactly the events after it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import Header, Request
from fastapi.responses import StreamingResponse
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from backend.db import Database
from backend.shipments.models import ShipmentEvent
from backend.shipments.schemas import TimelineEvent

STREAM_HEADERS = {
    "Cache-Control": "no-store",
    # Tell nginx-style proxies not to buffer the stream.
    "X-Accel-Buffering": "no",
}


def channel(shipment_id: uuid.UUID) -> str:
    return f"shipment-events:{shipment_id}"


def event_json(event: ShipmentEvent | TimelineEvent) -> dict[str, Any]:
    """What a stream shows of a timeline event: the fields of the public timeline."""
    return TimelineEvent.model_validate(event).model_dump(mode="json")


def announce_after_commit(
    database: Database, redis: Redis, shipment_id: uuid.UUID, events: Sequence[TimelineEvent]
) -> None:
    """Publish the new timeline events once (and only if) the change has committed."""
    messages = [json.dumps(event_json(event)) for event in events]

    async def publish() -> None:
        for message in messages:
            await redis.publish(channel(shipment_id), message)

    database.after_commit(publish)


def sse(event: dict[str, Any]) -> str:
    return f"id: {event['sequence']}\nevent: timeline\ndata: {json.dumps(event)}\n\n"


async def _events_after(
    sessionmaker: async_sessionmaker[AsyncSession], shipment_id: uuid.UUID, sequence: int
) -> list[dict[str, Any]]:
    async with sessionmaker() as session:
        statement = (
            select(ShipmentEvent)
            .where(
                col(ShipmentEvent.shipment_id) == shipment_id,
                col(ShipmentEvent.sequence) > sequence,
            )
            .order_by(col(ShipmentEvent.sequence))
        )
        return [event_json(event) for event in (await session.execute(statement)).scalars()]


async def timeline_stream(
    *,
    redis: Redis,
    sessionmaker: async_sessionmaker[AsyncSession],
    shipment_id: uuid.UUID,
    last_event_id: int,
    heartbeat_seconds: float,
) -> AsyncIterator[str]:
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel(shipment_id))
    try:
        sent = last_event_id
        yield "retry: 3000\n\n"  # how soon browsers reconnect after a drop
        for event in await _events_after(sessionmaker, shipment_id, sent):
            sent = event["sequence"]
            yield sse(event)
        while True:
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=heartbeat_seconds
            )
            if message is None:
                yield ": keep-alive\n\n"  # a comment: keeps proxies from closing an idle stream
                continue
            event = json.loads(message["data"])
            if event["sequence"] > sent + 1:
                # A message was lost between replicas: fill the gap from the database.
                missed = await _events_after(sessionmaker, shipment_id, sent)
                for earlier in missed:
                    sent = earlier["sequence"]
                    yield sse(earlier)
            elif event["sequence"] == sent + 1:
                sent = event["sequence"]
                yield sse(event)
    finally:
        await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]


LastEventId = Annotated[
    int | None,
    Header(
        alias="Last-Event-ID",
        ge=0,
        le=2**31 - 1,
        description="The `id` (timeline sequence) of the last event received; resumes after it.",
    ),
]


def stream_response(
    request: Request, shipment_id: uuid.UUID, last_event_id: int
) -> StreamingResponse:
    """The SSE response for one shipment's timeline, for routes that have authorized it."""
    state = request.app.state
    stream = timeline_stream(
        redis=state.redis,
        sessionmaker=state.sessionmaker,
        shipment_id=shipment_id,
        last_event_id=last_event_id,
        heartbeat_seconds=state.settings.sse_heartbeat_seconds,
    )
    return StreamingResponse(stream, media_type="text/event-stream", headers=STREAM_HEADERS)


SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A Server-Sent Events stream: one `timeline` event per timeline entry "
        "(its `id` is the sequence), and keep-alive comments while idle.",
        "content": {
            "text/event-stream": {
                "example": 'id: 3\nevent: timeline\ndata: {"sequence": 3, "status": '
                '"out_for_delivery", "location_zip": null, "description": "Out for delivery", '
                '"created_at": "2026-11-22T14:05:00Z"}\n\n'
            }
        },
    }
}
