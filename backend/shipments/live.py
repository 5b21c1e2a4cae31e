"""Live updates: timeline events as Server-Sent Events, fanned out through Redis pub/sub so a
client connected to any replica hears about changes made on any other.

A stream is admitted by the process's stream hub (backend/shipments/stream_hub.py: one Redis
subscription for all streams, caps per process and per client address) before it reads what it
missed from PostgreSQL, so nothing falls in between; events are deduplicated by their sequence,
which is also the SSE `id`, and a gap is filled from the database. A client that reconnects with
`Last-Event-ID` gets exactly the events after it.

A stream ends after its shipment's terminal event, after `STREAM_MAX_LIFETIME_SECONDS`, when
Redis or the process goes away (those with a `retry:` hint: the client resumes), and, for an
authenticated stream, when its token expires or is revoked by a logout or a password reset
(checked at each heartbeat, in Redis).

FastAPI's own `EventSourceResponse` (0.135+) is not used: it runs two extra tasks and two
memory streams per stream, pings at a fixed process-wide interval with no hook for the token
check, and overrides `Cache-Control` with `no-cache` where these streams say `no-store`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Header, Request
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from backend.accounts.tokens import AccessClaims, RevocationList
from backend.accounts.tools import AccountTools
from backend.context import context_of
from backend.db import UnitOfWork, unit_of_work_of
from backend.errors import problem_responses
from backend.shipments.models import Shipment, ShipmentEvent
from backend.shipments.status import TERMINAL, ShipmentStatus
from backend.shipments.stream_hub import (
    Listener,
    StreamHub,
    StreamsUnavailable,
    TooManyStreams,
    channel,
)
from backend.shipments.tools import ShipmentTools
from backend.shipments.views import public_timeline_view

logger = logging.getLogger(__name__)

STREAM_HEADERS = {
    "Cache-Control": "no-store",
    # Tell nginx-style proxies not to buffer the stream.
    "X-Accel-Buffering": "no",
}
# How soon browsers reconnect after a drop.
RETRY_HINT = "retry: 3000\n\n"
KEEP_ALIVE = ": keep-alive\n\n"  # a comment: keeps proxies from closing an idle stream
# Every this many heartbeats a stream reads what it may have missed from PostgreSQL. An
# announcement can be lost after its change committed (the publish failed, or Redis dropped it
# on the way), and a stream would then fall behind until the shipment's next event, which may
# never come. One indexed query a minute per stream at the default heartbeat.
CATCH_UP_EVERY_BEATS = 4
# The database failures a gap fill can meet mid-stream: the stream ends, the client resumes.
# OSError covers asyncpg's client-side deadline (TimeoutError) and the socket's own failures,
# which SQLAlchemy passes through unwrapped.
DATABASE_FAILURES = (DBAPIError, PoolTimeoutError, OSError)

__all__ = ["announce_after_commit", "channel", "open_timeline_stream"]


def event_json(event: ShipmentEvent) -> dict[str, Any]:
    """What a stream shows of a timeline event: the fields of the public timeline."""
    return public_timeline_view([event])[0].model_dump(mode="json")


def announce_after_commit(
    unit: UnitOfWork, redis: Redis, shipment_id: uuid.UUID, events: Sequence[ShipmentEvent]
) -> None:
    """Publish the new timeline events once (and only if) the change has committed."""
    messages = [json.dumps(event_json(event)) for event in events]

    async def publish() -> None:
        for message in messages:
            await redis.publish(channel(shipment_id), message)

    unit.after_commit(publish)


def sse(event: dict[str, Any]) -> str:
    return f"id: {event['sequence']}\nevent: timeline\ndata: {json.dumps(event)}\n\n"


def closing_retry_hint(reason: str) -> str:
    """Sent before a stream the client should reopen ends. Jittered, so that the streams a
    restart or an outage ends all at once do not all come back in the same instant."""
    return f": {reason}\nretry: {random.randint(1000, 5000)}\n\n"  # noqa: S311 - not a secret


def is_terminal(event: dict[str, Any]) -> bool:
    return ShipmentStatus(event["status"]) in TERMINAL


def _events_after(shipment_id: uuid.UUID, sequence: int) -> Any:
    return (
        select(ShipmentEvent)
        .where(
            col(ShipmentEvent.shipment_id) == shipment_id,
            col(ShipmentEvent.sequence) > sequence,
        )
        .order_by(col(ShipmentEvent.sequence))
    )


async def _read_events_after(
    session: AsyncSession, shipment_id: uuid.UUID, sequence: int
) -> list[dict[str, Any]]:
    rows = (await session.execute(_events_after(shipment_id, sequence))).scalars()
    return [event_json(event) for event in rows]


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a new stream missed, read after it subscribed, and whether the shipment is done."""

    events: list[dict[str, Any]]
    finished: bool


async def read_backlog(session: AsyncSession, shipment_id: uuid.UUID, after: int) -> Backlog:
    """The status first, then the events: each statement sees what had committed when it began
    (Read Committed), and a terminal status commits together with its event. Read the other
    way round, a delivery committed between the two reads looked finished with nothing left to
    send, and a client resuming just before it got a 204 and never heard the terminal event."""
    status = await session.scalar(
        select(col(Shipment.status)).where(col(Shipment.id) == shipment_id)
    )
    events = await _read_events_after(session, shipment_id, after)
    return Backlog(events, finished=status is not None and ShipmentStatus(status) in TERMINAL)


@dataclass(frozen=True, slots=True)
class TokenWatch:
    """An authenticated stream's token, checked again while the stream runs."""

    claims: AccessClaims
    revocations: RevocationList

    def seconds_left(self) -> float:
        return (self.claims.expires_at - datetime.now(UTC)).total_seconds()

    async def closing_frame(self) -> str | None:
        """The last frame, if the stream must end now: a revoked token ends it for good, one
        that cannot be checked (Redis is away) with a retry hint. Fails closed either way."""
        try:
            # Logout and a password reset alike, in one Redis round trip and no query.
            revoked = await self.revocations.is_revoked(self.claims)
        except RedisError:
            return closing_retry_hint("token could not be checked")
        return ": token revoked\n\n" if revoked else None


@dataclass(frozen=True, slots=True)
class StreamTiming:
    heartbeat_seconds: float
    lifetime_seconds: float


class TimelineStream:
    """The frames of one admitted stream: the backlog, then live events, until it must end."""

    def __init__(
        self,
        *,
        hub: StreamHub,
        listener: Listener,
        sessionmaker: async_sessionmaker[AsyncSession],
        shipment_id: uuid.UUID,
        last_event_id: int,
        timing: StreamTiming,
        token: TokenWatch | None,
    ) -> None:
        self._hub = hub
        self._listener = listener
        self._sessionmaker = sessionmaker
        self._shipment_id = shipment_id
        self._sent = last_event_id
        self._timing = timing
        self._token = token
        self._finished = False  # the terminal event has been sent
        self._beats = 0

    def release(self) -> None:
        self._hub.release(self._listener)

    async def frames(self, backlog: Backlog) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        ends_at = started + self._timing.lifetime_seconds
        token_ends_at = started + self._token.seconds_left() if self._token else float("inf")
        next_beat = started + self._timing.heartbeat_seconds
        yield RETRY_HINT
        for frame in self._accept_all(backlog.events):
            yield frame
        while not self._finished:
            now = loop.time()
            if now >= ends_at:
                yield closing_retry_hint("stream lifetime reached")
                return
            if now >= token_ends_at:
                yield ": token expired\n\n"
                return
            await self._listener.wait(min(next_beat, ends_at, token_ends_at) - now)
            if self._listener.ended is not None:
                yield closing_retry_hint(f"stream ended: {self._listener.ended.value}")
                return
            if loop.time() >= next_beat:
                self._beats += 1
                if self._beats % CATCH_UP_EVERY_BEATS == 0:
                    for frame in await self._catch_up():
                        yield frame
            try:
                frames = await self._receive()
            except DATABASE_FAILURES as error:
                logger.warning("live stream ended: database unavailable (%s)", type(error).__name__)
                yield closing_retry_hint("stream ended: database unavailable")
                return
            for frame in frames:
                yield frame
            if loop.time() >= next_beat and not self._finished:
                # The heartbeat is also when an authenticated stream's token is checked again.
                closing = await self._token.closing_frame() if self._token else None
                if closing is not None:
                    yield closing
                    return
                yield KEEP_ALIVE
                next_beat = loop.time() + self._timing.heartbeat_seconds

    def _accept_all(self, events: list[dict[str, Any]]) -> list[str]:
        """Frames for the events not sent yet, in order, up to the terminal one."""
        frames = []
        for event in events:
            if self._finished or event["sequence"] <= self._sent:
                continue
            self._sent = event["sequence"]
            self._finished = is_terminal(event)
            frames.append(sse(event))
        return frames

    async def _receive(self) -> list[str]:
        """Frames for what the hub delivered, filling any gap from PostgreSQL."""
        messages = [json.loads(data) for data in self._listener.take()]
        lost_some = self._listener.overflowed
        self._listener.overflowed = False
        frames: list[str] = []
        if lost_some or any(message["sequence"] > self._sent + 1 for message in messages):
            # A message was lost between replicas, or dropped for a slow reader.
            frames += self._accept_all(await self._missed_events())
        return frames + self._accept_all(sorted(messages, key=lambda m: int(m["sequence"])))

    async def _catch_up(self) -> list[str]:
        """Frames for events committed but never announced. Nothing is known to be missing, so
        a database that cannot answer now only postpones this to the next catch-up: the stream
        goes on with what Redis brings."""
        try:
            return self._accept_all(await self._missed_events())
        except DATABASE_FAILURES:
            return []

    async def _missed_events(self) -> list[dict[str, Any]]:
        async with self._sessionmaker() as session:
            return await _read_events_after(session, self._shipment_id, self._sent)


class TimelineStreamResponse(StreamingResponse):
    """Gives the stream's slot back however the response ends, even if it never started."""

    def __init__(self, stream: TimelineStream, backlog: Backlog) -> None:
        super().__init__(
            stream.frames(backlog), media_type="text/event-stream", headers=STREAM_HEADERS
        )
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stream.release()


def _token_watch(request: Request) -> TokenWatch:
    """The bearer token the route has already authenticated, to check again later."""
    context = context_of(request)
    codec = context.part(AccountTools).token_codec
    hub = context.part(ShipmentTools).stream_hub
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    # Checked on the hub's own connections: never on those that authenticate requests.
    return TokenWatch(codec.decode(token), RevocationList(hub.live_redis))


async def open_timeline_stream(
    request: Request, shipment_id: uuid.UUID, last_event_id: int, *, authenticated: bool
) -> Response:
    """The SSE response for one shipment's timeline, for routes that have authorized it.

    Refused (problem+json) before anything is streamed when the caps are reached or live
    updates are unavailable; 204 for a finished shipment with nothing left to send, which
    tells a browser's EventSource to stop reconnecting.
    """
    context = context_of(request)
    settings = context.settings
    token = _token_watch(request) if authenticated else None
    hub = context.part(ShipmentTools).stream_hub
    listener = hub.admit(shipment_id, request.client.host if request.client else "unknown")
    try:
        backlog = await read_backlog(unit_of_work_of(request).session, shipment_id, last_event_id)
    except BaseException:
        hub.release(listener)
        raise
    if backlog.finished and not backlog.events:
        hub.release(listener)
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    stream = TimelineStream(
        hub=hub,
        listener=listener,
        sessionmaker=context.sessionmaker,
        shipment_id=shipment_id,
        last_event_id=last_event_id,
        timing=StreamTiming(settings.sse_heartbeat_seconds, settings.stream_max_lifetime_seconds),
        token=token,
    )
    return TimelineStreamResponse(stream, backlog)


LastEventId = Annotated[
    int | None,
    Header(
        alias="Last-Event-ID",
        ge=0,
        le=2**31 - 1,
        description="The `id` (timeline sequence) of the last event received; resumes after it.",
    ),
]


SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A Server-Sent Events stream: one `timeline` event per timeline entry "
        "(its `id` is the sequence), and keep-alive comments while idle. It ends after the "
        "terminal event (`delivered`, `cancelled`, `returned`); after a maximum lifetime, a "
        "restart or an outage it ends with a `retry:` hint: reconnect with `Last-Event-ID`.",
        "content": {
            "text/event-stream": {
                "example": 'id: 3\nevent: timeline\ndata: {"sequence": 3, "status": '
                '"out_for_delivery", "occurred_at": "2026-11-22T14:05:00Z", "location_zip": '
                '"02139", "location": {"zip_code": "02139", "city": "Cambridge", "lat": null, '
                '"lon": null}, "failure_reason": null, "description": "Out for delivery", '
                '"created_at": "2026-11-22T14:05:00Z", "livemode": true}\n\n'
            }
        },
    },
    204: {
        "description": "The shipment is finished and nothing follows `Last-Event-ID`: "
        "stop listening."
    },
    **problem_responses(TooManyStreams, StreamsUnavailable),
}
