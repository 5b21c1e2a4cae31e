"""One Redis subscription per process, shared by every live-update stream it serves.

A stream used to hold a pub/sub connection of its own, taken from the pool that also checks
tokens and rate limits: a hundred open streams emptied it and every login got 503. Here one
task owns one dedicated connection, PSUBSCRIBEd to `shipment-events:*`, and hands each message
to the streams of that shipment in this process, so an open stream costs memory, not a
connection. Messages for shipments nobody here follows are dropped by channel name, unparsed.

Live-update traffic has a small pool of its own (`live_redis`): the announcements of new
events, and the token check each authenticated stream makes at every heartbeat. Never the pool
that authenticates requests: a stampede of requests that empties that pool must neither end every
open stream that could not check its token nor drop the announcement of an event (a stream
would not hear of it until the next one).

When that connection fails, every stream ends with a retry hint (its client resumes with
`Last-Event-ID` and misses nothing: the replay comes from PostgreSQL) and new streams are
refused with 503 until the subscription is back. The outage is logged once, not per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections import deque

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from backend.config import Settings
from backend.errors import DomainError
from backend.redis_client import create_redis

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "shipment-events:"
# Messages waiting for one slow stream; beyond this it re-reads from PostgreSQL instead.
MAX_PENDING_MESSAGES = 64
# How often the reader wakes while idle, and pings Redis after this long without a word.
POLL_SECONDS = 1.0
PING_AFTER_IDLE_SECONDS = 5.0
RECONNECT_DELAY_SECONDS = 1.0
# Suggested waits for refused clients: a slot frees when some stream ends.
RETRY_FULL_SECONDS = 5
RETRY_PER_CLIENT_SECONDS = 30
# One GET per authenticated stream per heartbeat and one PUBLISH per timeline event, each well
# under a millisecond on a nearby Redis: a few connections serve thousands of streams.
LIVE_REDIS_CONNECTIONS = 4


def channel(shipment_id: uuid.UUID) -> str:
    return f"{CHANNEL_PREFIX}{shipment_id}"


class TooManyStreams(DomainError):
    status_code = 429
    code = "too_many_streams"
    title = "Too many streams"
    default_detail = "This address has too many live-update streams open; close one first."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(RETRY_PER_CLIENT_SECONDS)})


class StreamsUnavailable(DomainError):
    status_code = 503
    code = "streams_unavailable"
    title = "Live updates unavailable"
    default_detail = "Live updates cannot start on this server now; retry shortly."

    def __init__(self, detail: str | None = None, retry_after_seconds: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_seconds)})


class EndReason(enum.Enum):
    redis_lost = "redis_lost"
    shutdown = "shutdown"


class Listener:
    """One stream's mailbox: raw messages for its shipment, and why it must end, if it must."""

    __slots__ = ("_wake", "channel", "client", "ended", "messages", "overflowed")

    def __init__(self, channel_name: str, client: str) -> None:
        self.channel = channel_name
        self.client = client
        self.messages: deque[str] = deque()
        self.overflowed = False
        self.ended: EndReason | None = None
        self._wake = asyncio.Event()

    def deliver(self, data: str) -> None:
        if len(self.messages) < MAX_PENDING_MESSAGES:
            self.messages.append(data)
        else:
            self.overflowed = True  # the stream reads what it missed from PostgreSQL
        self._wake.set()

    def end(self, reason: EndReason) -> None:
        self.ended = reason
        self._wake.set()

    async def wait(self, seconds: float) -> None:
        """Until something arrives or the stream must end, or `seconds` pass."""
        if not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, unlike wait_for on 3.11, creates no task per wait.
                async with asyncio.timeout(max(seconds, 0.0)):
                    await self._wake.wait()
        self._wake.clear()

    def take(self) -> list[str]:
        taken = list(self.messages)
        self.messages.clear()
        return taken


class StreamHub:
    """Admits streams within the caps and feeds them from the process's one subscription."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self._per_process = settings.streams_per_process
        self._per_client = settings.streams_per_client
        self._answer_within = max(2 * settings.redis_timeout_seconds, POLL_SECONDS)
        # Its own client and pool, one connection: never the pool that authenticates. No
        # silent reconnect either: messages sent while it was away would be lost unnoticed.
        self._redis = Redis.from_url(
            redis_url,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
            retry=Retry(NoBackoff(), retries=0),
            max_connections=1,
            decode_responses=True,
        )
        # Announcements and token checks (see the module's docstring).
        self.live_redis = create_redis(settings, redis_url, max_connections=LIVE_REDIS_CONNECTIONS)
        self._listeners: dict[str, set[Listener]] = {}
        self._per_address: dict[str, int] = {}
        self._open = 0
        self._subscribed = asyncio.Event()
        self._shutting_down = False
        self._outage_logged = False
        self._reader: asyncio.Task[None] | None = None

    @property
    def open_streams(self) -> int:
        return self._open

    # --- admission ------------------------------------------------------------------------

    def admit(self, shipment_id: uuid.UUID, client: str) -> Listener:
        """A listener for a new stream, subscribed from now on; raises when it may not start."""
        if self._shutting_down:
            raise StreamsUnavailable("This server is shutting down; reconnect to another.")
        if not self._subscribed.is_set():
            raise StreamsUnavailable("Live updates are unavailable; retry shortly.")
        if self._open >= self._per_process:
            raise StreamsUnavailable(
                "This server has as many streams open as it allows; retry shortly.",
                retry_after_seconds=RETRY_FULL_SECONDS,
            )
        if self._per_address.get(client, 0) >= self._per_client:
            raise TooManyStreams()
        listener = Listener(channel(shipment_id), client)
        self._listeners.setdefault(listener.channel, set()).add(listener)
        self._per_address[client] = self._per_address.get(client, 0) + 1
        self._open += 1
        return listener

    def release(self, listener: Listener) -> None:
        """Forget a stream that ended; safe to call more than once."""
        followers = self._listeners.get(listener.channel)
        if followers is None or listener not in followers:
            return
        followers.discard(listener)
        if not followers:
            del self._listeners[listener.channel]
        remaining = self._per_address[listener.client] - 1
        if remaining:
            self._per_address[listener.client] = remaining
        else:
            del self._per_address[listener.client]
        self._open -= 1

    def end_all(self, reason: EndReason) -> None:
        for followers in self._listeners.values():
            for listener in followers:
                listener.end(reason)

    def shut_down(self) -> None:
        """End every stream now and refuse new ones: the process is stopping."""
        self._shutting_down = True
        self.end_all(EndReason.shutdown)

    # --- the subscription -----------------------------------------------------------------

    async def start(self, wait_seconds: float) -> None:
        """Start following Redis; wait (briefly) for the first subscription, not for Redis."""
        self._reader = asyncio.create_task(self._follow(), name="stream-hub")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds):
                await self._subscribed.wait()

    async def stop(self) -> None:
        self.shut_down()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._redis.aclose()
        await self.live_redis.aclose()

    async def _follow(self) -> None:
        while True:
            try:
                await self._subscribe_and_dispatch()
            except (RedisError, OSError) as error:
                self._lost(error)
            await asyncio.sleep(RECONNECT_DELAY_SECONDS)

    async def _subscribe_and_dispatch(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
            await self._confirmed(pubsub)
            if self._outage_logged:
                logger.warning("live updates: Redis subscription restored")
                self._outage_logged = False
            self._subscribed.set()
            await self._dispatch_until_lost(pubsub)
        finally:
            self._subscribed.clear()
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _confirmed(self, pubsub: PubSub) -> None:
        """Until Redis acknowledges the PSUBSCRIBE: only then can a stream read its backlog
        from PostgreSQL without missing a message published in between."""
        async with asyncio.timeout(self._answer_within):
            while True:
                message = await pubsub.get_message(timeout=self._answer_within)
                if message is not None and message["type"] == "psubscribe":
                    return

    async def _dispatch_until_lost(self, pubsub: PubSub) -> None:
        last_heard = pinged = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=POLL_SECONDS)
            now = time.monotonic()
            if message is not None:
                last_heard = now
                if message["type"] == "pmessage":
                    self._dispatch(message["channel"], message["data"])
                continue
            # A paused or unreachable server says nothing at all; a ping must be answered.
            if pinged > last_heard and now - pinged > self._answer_within:
                raise ConnectionError("Redis did not answer a ping on the subscription")
            if now - max(last_heard, pinged) > PING_AFTER_IDLE_SECONDS:
                await pubsub.ping()
                pinged = now

    def _dispatch(self, channel_name: str, data: str) -> None:
        for listener in self._listeners.get(channel_name, ()):
            listener.deliver(data)

    def _lost(self, error: BaseException) -> None:
        if not self._outage_logged:
            # One line per outage, however many streams it ends; no traceback: it is expected.
            logger.warning(
                "live updates: Redis subscription lost (%s); ending %d streams, retrying",
                type(error).__name__,
                self._open,
            )
            self._outage_logged = True
        self.end_all(EndReason.redis_lost)
