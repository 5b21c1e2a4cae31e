"""Live-update streams kept open through a fault, followed the way a browser's EventSource does.

A follower opens `GET /shipments/{id}/stream` (as the seller or the assigned partner) or the
public `GET /track/{tracking_number}/stream` on a shipment the load created, and reads its
frames. When a stream ends it reconnects with `Last-Event-ID` after the server's `retry:` hint;
a 429 or 503 is retried after its `Retry-After`; both waits are capped short so that a test
stays fast. A 204 says the shipment is finished: the follower moves on to a newer shipment.

Every connection and every event received is recorded; `check_streams` then holds them to the
contract: no 500 and no traceback, a stream ends only with a `retry:` hint, its terminal event
or its token's end (or is refused with a 429/503 problem+json before it starts), and the events
a shipment's follower received across all its reconnects are exactly the stored timeline's
first events, each once, in order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from tests.faults.records import problem_code
from tests.sse import Frame, parse_frame

TERMINAL = frozenset({"delivered", "cancelled", "returned"})
STREAM_KINDS = ("seller", "partner", "public")
# The longest a follower honours a `retry:` hint or a Retry-After (a browser would wait longer).
RETRY_CAP_SECONDS = 0.25
# Before the server's first `retry:` hint, and after a failure that carries none.
DEFAULT_RETRY_SECONDS = 3.0
# A hang guard on the response head: the deadline checks are made on the record.
OPEN_GUARD_SECONDS = 30.0
# Endings that follow the contract; "open": still streaming when the client closed it.
CLEAN_ENDINGS = frozenset({"retry", "terminal", "token", "open"})
# How long a follower waits for a shipment of its own before it shares one with another.
SHARE_AFTER_SECONDS = 2.0
# How long, after the load stopped, the streams still open may take to hear every stored event.
CATCH_UP_SECONDS = 10.0


@dataclass(slots=True)
class Connection:
    """One request for a stream and how it went (`ending` for a 200 stream)."""

    started: float
    answered: float | None = None
    ended: float | None = None
    status: int | None = None
    code: str | None = None
    content_type: str = ""
    frames: int = 0
    # "retry", "terminal", "token" (the server ended it cleanly), "open" (the client closed
    # it), "cut" (it stopped without a word), "finished" (a 204), "refused" (another status),
    # "abandoned" (the client closed it before the answer came).
    ending: str = "open"
    error: str | None = None
    traceback: bool = False

    def __str__(self) -> str:
        outcome = self.status if self.status is not None else self.error
        waited = f"{self.answered - self.started:.2f}s" if self.answered is not None else "-"
        code = self.code or ""
        return f"{outcome} {code} (head after {waited}) {self.frames} frames, {self.ending}"


@dataclass(slots=True)
class FollowedShipment:
    """One shipment followed by one follower, through every reconnect."""

    follower: str
    kind: str
    shipment_id: str
    path: str
    headers: dict[str, str]
    # (SSE id, payload sequence, payload status) of every event received, in order.
    events: list[tuple[str | None, int, str]] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    finished: bool = False  # answered 204: nothing more will come

    @property
    def last_event_id(self) -> str | None:
        return self.events[-1][0] if self.events else None

    def __str__(self) -> str:
        return f"{self.follower} on {self.shipment_id} ({self.kind})"


def _ending(last: Frame | None, frames: int, last_status: str | None) -> str:
    """How a stream that the server closed ended, from its last frame. The first frame of
    every stream is a `retry:` hint too: only a later one is a closing hint."""
    if last is None:
        return "cut"
    if last.retry is not None and frames > 1:
        return "retry"
    if last.data is not None and last_status in TERMINAL:
        return "terminal"
    if any("token" in comment for comment in last.comments):
        return "token"
    return "cut"


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("retry-after", DEFAULT_RETRY_SECONDS))
    except ValueError:
        return DEFAULT_RETRY_SECONDS


async def connect_once(http: httpx.AsyncClient, followed: FollowedShipment) -> float | None:
    """One connection of an EventSource: read the stream until it ends; returns how long to
    wait before the next one, or None if the shipment is finished (a 204)."""
    connection = Connection(started=time.monotonic())
    followed.connections.append(connection)
    headers = {**followed.headers, "Accept": "text/event-stream"}
    if followed.last_event_id is not None:
        headers["Last-Event-ID"] = followed.last_event_id
    try:
        async with asyncio.timeout(OPEN_GUARD_SECONDS):
            request = http.build_request("GET", followed.path, headers=headers, timeout=None)
            response = await http.send(request, stream=True)
    except (httpx.HTTPError, TimeoutError) as error:
        connection.ended = time.monotonic()
        connection.ending, connection.error = "refused", repr(error)
        return DEFAULT_RETRY_SECONDS
    except asyncio.CancelledError:
        connection.ended = time.monotonic()
        connection.ending = "abandoned"  # the load stopped while this one was being answered
        raise
    connection.answered = time.monotonic()
    connection.status = response.status_code
    connection.content_type = response.headers.get("content-type", "")
    try:
        if response.status_code == 204:
            followed.finished = True
            connection.ending = "finished"
            return None
        if response.status_code != 200:
            connection.ending = "refused"
            async with asyncio.timeout(OPEN_GUARD_SECONDS):
                await response.aread()
            connection.code = problem_code(response)
            connection.traceback = "Traceback" in response.text
            return _retry_after(response)
        return await _read_stream(response, followed, connection)
    finally:
        connection.ended = time.monotonic()
        await response.aclose()


async def _read_stream(
    response: httpx.Response, followed: FollowedShipment, connection: Connection
) -> float:
    """Record the stream's events until it ends; returns its last `retry:` hint in seconds."""
    retry_seconds = DEFAULT_RETRY_SECONDS
    lines: list[str] = []
    last: Frame | None = None
    try:
        async for line in response.aiter_lines():
            connection.traceback |= "Traceback" in line
            if line:
                lines.append(line)
                continue
            if not lines:
                continue
            last, lines = parse_frame(lines), []
            connection.frames += 1
            if last.retry is not None and last.retry.isdigit():
                retry_seconds = int(last.retry) / 1000
            if last.data is not None:
                payload = json.loads(last.data)
                followed.events.append((last.id, payload["sequence"], payload["status"]))
    except httpx.HTTPError as error:
        connection.ending, connection.error = "cut", repr(error)
        return retry_seconds
    last_status = followed.events[-1][2] if followed.events else None
    connection.ending = _ending(last, connection.frames, last_status)
    return retry_seconds


Target = tuple[str, dict[str, str], str]  # (shipment id, auth headers, stream path)


class StreamFollowers:
    """`count` followers, as many of each kind, on shipments chosen by `target_for(kind,
    excluded)`: the newest suitable shipment not in `excluded`, or None for now. A follower
    waits (up to SHARE_AFTER_SECONDS) for a shipment no other follower is on: followers piled on
    one shipment would all end with its terminal event, and all be between streams at once."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        target_for: Callable[[str, set[str]], Target | None],
        count: int,
    ) -> None:
        self.http = http
        self.followed: list[FollowedShipment] = []
        self._target_for = target_for
        self._count = count
        self._tasks: list[asyncio.Task[None]] = []
        self._no_new_shipments = asyncio.Event()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._follow(i)) for i in range(self._count)]

    def crashed(self) -> BaseException | None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None

    def stop_choosing(self) -> None:
        """Followers stay on their shipment (reconnecting) but take no new one."""
        self._no_new_shipments.set()

    async def close(self) -> None:
        """Close every open stream (as a browser tab closes) and end the followers."""
        for task in self._tasks:
            task.cancel()
        outcomes = await asyncio.gather(*self._tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                raise outcome

    def current(self) -> list[FollowedShipment]:
        """The shipment each follower is on now, unless it has finished."""
        latest: dict[str, FollowedShipment] = {}
        for followed in self.followed:
            latest[followed.follower] = followed
        return [followed for followed in latest.values() if not followed.finished]

    @property
    def count(self) -> int:
        return self._count

    def open_at(self, moment: float) -> int:
        """Streams that were streaming (200) at `moment`."""
        return sum(
            1
            for followed in self.followed
            for c in followed.connections
            if c.status == 200
            and c.answered is not None
            and c.answered <= moment
            and (c.ended is None or c.ended >= moment)
        )

    async def _follow(self, index: int) -> None:
        kind = STREAM_KINDS[index % len(STREAM_KINDS)]
        name = f"stream-{kind}-{index}"
        seen: set[str] = set()
        waiting_since = time.monotonic()
        while True:
            share = time.monotonic() - waiting_since > SHARE_AFTER_SECONDS
            target = None if self._no_new_shipments.is_set() else self._choose(kind, seen, share)
            if target is None:
                await asyncio.sleep(0.05)
                continue
            shipment_id, headers, path = target
            seen.add(shipment_id)
            followed = FollowedShipment(name, kind, shipment_id, path, headers)
            self.followed.append(followed)
            await self._reconnect_until_finished(followed)
            waiting_since = time.monotonic()

    def _choose(self, kind: str, seen: set[str], share: bool) -> Target | None:
        """A shipment of its own, or (`share`) one another follower is on."""
        others = {followed.shipment_id for followed in self.current()}
        return self._target_for(kind, seen | others) or (
            self._target_for(kind, seen) if share else None
        )

    async def _reconnect_until_finished(self, followed: FollowedShipment) -> None:
        while True:
            wait = await connect_once(self.http, followed)
            if wait is None:
                return
            # The server's suggested wait, capped: a browser would wait it out in full.
            await asyncio.sleep(min(wait, RETRY_CAP_SECONDS))
