"""Live updates: timeline events as Server-Sent Events, across replicas, resumable.

httpx's ASGITransport buffers whole responses, so every stream here is read from a real uvicorn
server listening on 127.0.0.1, run as a task on the test's own event loop. Each "replica" is an
app of its own (its own engine, Redis client and lifespan) on the shared PostgreSQL and Redis.
Every read from a stream is bounded by a safety timeout so that no test can hang; no assertion
is ever made about how long anything took.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.main import create_app
from tests.assertions import assert_problem
from tests.conftest import make_settings
from tests.servers import serving
from tests.shipments.factories import (
    DESTINATION_ZIP,
    Parties,
    as_public,
    bring_to,
    create_shipment,
    delivery_code,
    get_shipment,
    make_parties,
    patch_shipment,
)
from tests.sse import Frame, parse_frame

# Upper bound for anything that waits (a guard against hanging, never a measurement).
SAFETY_SECONDS = 10.0
HEARTBEAT_SECONDS = 0.2

RECIPIENT_NAME = "Grace Hopper"
RECIPIENT_PHONE = "+1 617 555 0100"
ADDRESS_LINE = "77 Massachusetts Ave"
# The public timeline's fields: no partner's note (a failed attempt's), no coordinates.
TIMELINE_FIELDS = {
    "sequence",
    "status",
    "occurred_at",
    "location_zip",
    "location",
    "failure_reason",
    "description",
    "created_at",
    "livemode",
}


# --- real servers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replica:
    """One running app instance and a plain HTTP client for it."""

    base_url: str
    http: httpx.AsyncClient


@asynccontextmanager
async def running_replica(
    database_url: str, redis_url: str, **overrides: object
) -> AsyncIterator[Replica]:
    """An app served by uvicorn on a free 127.0.0.1 port (uvicorn runs the lifespan)."""
    values: dict[str, object] = {"sse_heartbeat_seconds": HEARTBEAT_SECONDS, **overrides}
    app = create_app(make_settings(database_url, redis_url, **values))
    async with (
        serving(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=SAFETY_SECONDS) as http,
    ):
        yield Replica(base_url, http)


@pytest.fixture(scope="module")
async def replica(database_url: str, redis_url: str) -> AsyncIterator[Replica]:
    """Shared by the module's tests (each still starts from empty tables and Redis)."""
    async with running_replica(database_url, redis_url) as running:
        yield running


@pytest.fixture
async def replica_b(database_url: str, redis_url: str) -> AsyncIterator[Replica]:
    async with running_replica(database_url, redis_url) as running:
        yield running


# --- reading Server-Sent Events -------------------------------------------------------------


class EventStream:
    """Frames read from an open SSE response, each read under a safety timeout."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.frames: list[Frame] = []

    async def next_frame(self) -> Frame:
        lines: list[str] = []
        async with asyncio.timeout(SAFETY_SECONDS):
            while True:
                try:
                    line = await anext(self._lines)
                except StopAsyncIteration:
                    raise AssertionError(f"the stream ended after {self.frames}") from None
                if line == "":
                    if lines:
                        break
                    continue
                lines.append(line)
        frame = parse_frame(lines)
        self.frames.append(frame)
        return frame

    async def next_event(self) -> Frame:
        """The next frame that carries data (skipping retry hints and keep-alive comments)."""
        async with asyncio.timeout(SAFETY_SECONDS):
            while True:
                frame = await self.next_frame()
                if frame.is_event:
                    return frame

    async def events(self, count: int) -> list[Frame]:
        return [await self.next_event() for _ in range(count)]


@asynccontextmanager
async def open_stream(
    http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[EventStream]:
    """Open an SSE stream (asserting 200) and close it on exit."""
    async with asyncio.timeout(SAFETY_SECONDS):
        response = await http.send(http.build_request("GET", path, headers=headers), stream=True)
    try:
        if response.status_code != 200:
            async with asyncio.timeout(SAFETY_SECONDS):
                body = await response.aread()
            raise AssertionError(f"{path}: {response.status_code} {body!r}")
        yield EventStream(response)
    finally:
        await response.aclose()


async def refused(
    http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """GET a stream that should be refused; fails (without hanging) if it opens instead."""
    async with asyncio.timeout(SAFETY_SECONDS):
        response = await http.send(http.build_request("GET", path, headers=headers), stream=True)
        try:
            assert response.status_code != 200, f"{path} opened a stream"
            await response.aread()
        finally:
            await response.aclose()
    return response


def stream_path(shipment: dict[str, Any]) -> str:
    return f"/shipments/{shipment['id']}/stream"


def public_path(shipment: dict[str, Any]) -> str:
    return f"/track/{shipment['tracking_number']}/stream"


def assert_timeline_frames(frames: Sequence[Frame], timeline: Sequence[dict[str, Any]]) -> None:
    """Each frame is the `timeline` event of the same sequence, with that event as its data."""
    by_sequence = {event["sequence"]: event for event in timeline}
    for frame in frames:
        assert frame.event == "timeline", frame
        payload = frame.payload()
        assert frame.id == str(payload["sequence"]), frame
        assert payload == by_sequence[payload["sequence"]], frame


# --- shipments ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    parties: Parties
    shipment: dict[str, Any]


async def scenario(http: httpx.AsyncClient, steps: int = 0) -> Scenario:
    """A shipment with a full recipient, `placed` (sequence 1) plus `steps` partner notes."""
    parties = await make_parties(http)
    shipment = await create_shipment(
        http,
        parties.seller_headers,
        destination={
            "zip_code": DESTINATION_ZIP,
            "address_line": ADDRESS_LINE,
            "city": "Cambridge",
        },
        recipient={
            "name": RECIPIENT_NAME,
            "email": f"grace-{uuid.uuid4().hex[:8]}@example.com",
            "phone": RECIPIENT_PHONE,
        },
    )
    for number in range(steps):
        await report(http, parties, shipment, note=f"Setup note {number + 1}")
    return Scenario(parties, shipment)


async def report(
    http: httpx.AsyncClient, parties: Parties, shipment: dict[str, Any], **body: Any
) -> dict[str, Any]:
    """An accepted partner PATCH; returns the updated shipment."""
    response = await patch_shipment(http, parties.partner_headers, shipment["id"], **body)
    assert response.status_code == 200, response.text
    updated: dict[str, Any] = response.json()
    return updated


async def timeline(http: httpx.AsyncClient, parties: Parties, shipment: dict[str, Any]) -> Any:
    """The shipment's timeline as GET /shipments/{id} shows it to its seller, in the fields
    streams carry (the public timeline's)."""
    return as_public((await get_shipment(http, parties.seller_headers, shipment["id"]))["timeline"])


# --- who may listen -------------------------------------------------------------------------


async def test_owner_and_assigned_partner_can_open_the_stream(replica: Replica) -> None:
    http = replica.http
    setup = await scenario(http, steps=1)

    for headers in (setup.parties.seller_headers, setup.parties.partner_headers):
        async with open_stream(http, stream_path(setup.shipment), headers) as stream:
            response = stream.response
            assert response.headers["content-type"].split(";")[0] == "text/event-stream"
            assert response.headers["cache-control"] == "no-store"
            frames = await stream.events(2)

        assert [frame.id for frame in frames] == ["1", "2"]
        assert_timeline_frames(frames, await timeline(http, setup.parties, setup.shipment))


async def test_public_stream_opens_without_a_token(replica: Replica) -> None:
    http = replica.http
    setup = await scenario(http)

    async with open_stream(http, public_path(setup.shipment)) as stream:
        assert stream.response.headers["content-type"].split(";")[0] == "text/event-stream"
        assert stream.response.headers["cache-control"] == "no-store"
        (frame,) = await stream.events(1)

    assert frame.id == "1"
    assert_timeline_frames([frame], await timeline(http, setup.parties, setup.shipment))


async def test_other_sellers_and_partners_get_404(replica: Replica) -> None:
    http = replica.http
    setup = await scenario(http)
    other = await make_parties(http)

    for headers in (other.seller_headers, other.partner_headers):
        response = await refused(http, stream_path(setup.shipment), headers)
        assert_problem(response, 404, "shipment_not_found")

    unknown = {"id": str(uuid.uuid4())}
    response = await refused(http, stream_path(unknown), setup.parties.seller_headers)
    assert_problem(response, 404, "shipment_not_found")


async def test_shipment_stream_needs_a_token(replica: Replica) -> None:
    setup = await scenario(replica.http)

    response = await refused(replica.http, stream_path(setup.shipment))

    assert_problem(response, 401, "not_authenticated")


async def test_unknown_tracking_number_is_404(replica: Replica) -> None:
    response = await refused(replica.http, "/track/NOSUCHPARCEL42/stream")

    assert_problem(response, 404, "tracking_number_not_found")


# --- replay, then live ----------------------------------------------------------------------


async def test_stream_replays_the_timeline_then_delivers_each_new_event(
    replica: Replica, db_engine: AsyncEngine
) -> None:
    http = replica.http
    setup = await scenario(http, steps=2)
    parties, shipment = setup.parties, setup.shipment

    async with open_stream(http, stream_path(shipment), parties.seller_headers) as stream:
        replayed = await stream.events(3)
        assert [frame.id for frame in replayed] == ["1", "2", "3"]
        assert_timeline_frames(replayed, await timeline(http, parties, shipment))

        live: list[Frame] = []
        await report(http, parties, shipment, status="in_transit", location_zip="10001")
        live.append(await stream.next_event())
        await report(http, parties, shipment, note="Arrived at the sorting hub")
        live.append(await stream.next_event())
        await report(http, parties, shipment, status="out_for_delivery")
        live.append(await stream.next_event())
        code = await delivery_code(db_engine, shipment["id"])
        await report(http, parties, shipment, status="delivered", verification_code=code)
        live.append(await stream.next_event())

    assert [frame.id for frame in live] == ["4", "5", "6", "7"]
    final = await timeline(http, parties, shipment)
    assert [event["sequence"] for event in final] == [1, 2, 3, 4, 5, 6, 7]
    assert_timeline_frames(live, final)
    assert [frame.payload()["status"] for frame in live] == [
        "in_transit",
        "in_transit",
        "out_for_delivery",
        "delivered",
    ]


async def test_every_listener_hears_the_same_change(replica: Replica) -> None:
    http = replica.http
    setup = await scenario(http)
    parties, shipment = setup.parties, setup.shipment

    async with (
        open_stream(http, stream_path(shipment), parties.seller_headers) as seller_stream,
        open_stream(http, stream_path(shipment), parties.partner_headers) as partner_stream,
        open_stream(http, public_path(shipment)) as public_stream,
    ):
        streams = (seller_stream, partner_stream, public_stream)
        for stream in streams:
            assert (await stream.next_event()).id == "1"
        await report(http, parties, shipment, status="in_transit")
        heard = [await stream.next_event() for stream in streams]

    assert [frame.id for frame in heard] == ["2", "2", "2"]
    assert_timeline_frames(heard, await timeline(http, parties, shipment))


async def test_seller_cancellation_is_streamed(replica: Replica) -> None:
    http = replica.http
    setup = await scenario(http)
    parties, shipment = setup.parties, setup.shipment

    async with open_stream(http, public_path(shipment)) as stream:
        await stream.next_event()
        response = await http.post(
            f"/shipments/{shipment['id']}/cancel", headers=parties.seller_headers
        )
        assert response.status_code == 200, response.text
        frame = await stream.next_event()

    assert frame.id == "2"
    assert frame.payload()["status"] == "cancelled"
    assert_timeline_frames([frame], await timeline(http, parties, shipment))


async def test_streams_hold_no_database_connection(database_url: str, redis_url: str) -> None:
    """Open streams leave the pool to requests: with one connection, three listeners and a
    PATCH all work, and each listener hears the change."""
    async with running_replica(database_url, redis_url, db_pool_size=1, db_max_overflow=0) as small:
        http = small.http
        setup = await scenario(http)
        parties, shipment = setup.parties, setup.shipment
        async with (
            open_stream(http, stream_path(shipment), parties.seller_headers) as first,
            open_stream(http, stream_path(shipment), parties.partner_headers) as second,
            open_stream(http, public_path(shipment)) as third,
        ):
            for stream in (first, second, third):
                await stream.next_event()
            await report(http, parties, shipment, status="in_transit")
            heard = [await stream.next_event() for stream in (first, second, third)]

    assert [frame.id for frame in heard] == ["2", "2", "2"]


# --- across replicas ------------------------------------------------------------------------


async def test_a_change_on_one_replica_reaches_listeners_on_another(
    replica: Replica, replica_b: Replica
) -> None:
    setup = await scenario(replica.http)
    parties, shipment = setup.parties, setup.shipment

    async with (
        open_stream(replica.http, stream_path(shipment), parties.seller_headers) as on_a,
        open_stream(replica_b.http, public_path(shipment)) as on_b,
    ):
        assert (await on_a.next_event()).id == "1"
        assert (await on_b.next_event()).id == "1"

        # Made through replica B, heard on replica A (and by B's own listener).
        await report(replica_b.http, parties, shipment, status="in_transit")
        from_b = [await on_a.next_event(), await on_b.next_event()]
        # Made through replica A, heard on replica B.
        await report(replica.http, parties, shipment, note="Left the depot")
        from_a = [await on_a.next_event(), await on_b.next_event()]

    assert [frame.id for frame in from_b] == ["2", "2"]
    assert [frame.id for frame in from_a] == ["3", "3"]
    assert_timeline_frames(from_b + from_a, await timeline(replica.http, parties, shipment))


# --- resuming -------------------------------------------------------------------------------


@pytest.mark.parametrize("public", [False, True], ids=["shipment", "public"])
async def test_last_event_id_resumes_after_it_without_gaps(replica: Replica, public: bool) -> None:
    http = replica.http
    setup = await scenario(http, steps=1)
    parties, shipment = setup.parties, setup.shipment
    path = public_path(shipment) if public else stream_path(shipment)
    headers = {} if public else dict(parties.seller_headers)

    async with open_stream(http, path, headers) as stream:
        first = await stream.events(2)
    assert [frame.id for frame in first] == ["1", "2"]
    last_seen = first[-1].id
    assert last_seen is not None

    # Three changes while nobody listens.
    await report(http, parties, shipment, status="in_transit")
    await report(http, parties, shipment, note="Left the depot")
    await report(http, parties, shipment, location_zip="10001")

    async with open_stream(http, path, {**headers, "Last-Event-ID": last_seen}) as stream:
        caught_up = await stream.events(3)
        await report(http, parties, shipment, status="out_for_delivery")
        caught_up.append(await stream.next_event())

    assert [frame.id for frame in caught_up] == ["3", "4", "5", "6"]
    assert_timeline_frames(caught_up, await timeline(http, parties, shipment))


async def test_resuming_from_the_newest_event_replays_nothing(replica: Replica) -> None:
    http = replica.http
    setup = await scenario(http, steps=2)
    parties, shipment = setup.parties, setup.shipment
    headers = {**parties.partner_headers, "Last-Event-ID": "3"}

    async with open_stream(http, stream_path(shipment), headers) as stream:
        # The stream is subscribed once it has said anything (retry hint, then keep-alives).
        await stream.next_frame()
        await report(http, parties, shipment, status="in_transit")
        frame = await stream.next_event()

    assert frame.id == "4"
    assert_timeline_frames([frame], await timeline(http, parties, shipment))


async def test_last_event_id_must_be_a_sequence_number(replica: Replica) -> None:
    setup = await scenario(replica.http)
    shipment = setup.shipment

    for value in ("abc", "3.5", "-1", "", "0x10"):
        for path, headers in (
            (stream_path(shipment), dict(setup.parties.seller_headers)),
            (public_path(shipment), {}),
        ):
            response = await refused(replica.http, path, {**headers, "Last-Event-ID": value})
            problem = assert_problem(response, 422, "validation_failed")
            assert [issue["loc"] for issue in problem["errors"]] == [["header", "Last-Event-ID"]]


async def test_a_lost_message_is_filled_in_from_the_database(
    replica: Replica, db_engine: AsyncEngine
) -> None:
    """If a live message never arrives (here: an event committed without announcing it), the
    next one reveals the gap and the stream fills it, in order, from PostgreSQL."""
    http = replica.http
    setup = await scenario(http)
    parties, shipment = setup.parties, setup.shipment

    async with open_stream(http, stream_path(shipment), parties.seller_headers) as stream:
        assert (await stream.next_event()).id == "1"
        await insert_unannounced_event(db_engine, shipment, sequence=2)
        await report(http, parties, shipment, status="in_transit")
        frames = await stream.events(2)

    assert [frame.id for frame in frames] == ["2", "3"]
    assert_timeline_frames(frames, await timeline(http, parties, shipment))


async def test_a_lost_message_with_no_event_after_it_is_caught_up_from_the_database(
    replica: Replica, db_engine: AsyncEngine
) -> None:
    """An announcement lost after its commit, and nothing after it to reveal the gap: the
    stream reads what it missed from PostgreSQL every few heartbeats all the same."""
    http = replica.http
    setup = await scenario(http)
    parties, shipment = setup.parties, setup.shipment

    async with open_stream(http, stream_path(shipment), parties.seller_headers) as stream:
        assert (await stream.next_event()).id == "1"
        await insert_unannounced_event(db_engine, shipment, sequence=2)
        caught_up = await stream.next_event()  # within a few heartbeats (the guard: 10 s)

    assert caught_up.id == "2"
    assert_timeline_frames([caught_up], (await timeline(http, parties, shipment))[1:])


async def insert_unannounced_event(
    db_engine: AsyncEngine, shipment: dict[str, Any], *, sequence: int
) -> None:
    """A timeline event committed without its live announcement, as if the publish was lost."""
    async with db_engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO shipment_events"
                " (id, shipment_id, sequence, status, location_zip, description, created_at)"
                " VALUES (:id, :shipment_id, :sequence, 'placed', NULL, 'Label printed', now())"
            ),
            {"id": uuid.uuid4(), "shipment_id": uuid.UUID(shipment["id"]), "sequence": sequence},
        )
        await connection.execute(
            text("UPDATE shipments SET last_sequence = :sequence WHERE id = :id"),
            {"id": uuid.UUID(shipment["id"]), "sequence": sequence},
        )


# --- heartbeats -----------------------------------------------------------------------------


async def test_an_idle_stream_carries_keep_alive_comments(replica: Replica) -> None:
    http = replica.http
    setup = await scenario(http)

    async with open_stream(http, public_path(setup.shipment)) as stream:
        assert (await stream.next_event()).id == "1"
        idle = [await stream.next_frame() for _ in range(2)]

    for frame in idle:
        assert frame.lines == (": keep-alive",), frame
        assert not frame.is_event


async def test_a_stream_idle_longer_than_the_redis_timeout_still_delivers(
    database_url: str, redis_url: str
) -> None:
    """In production the heartbeat (15 s) is longer than the Redis socket timeout (1 s): an
    idle subscription must survive waiting for longer than that."""
    async with running_replica(
        database_url, redis_url, sse_heartbeat_seconds=0.4, redis_timeout_seconds=0.1
    ) as slow:
        http = slow.http
        setup = await scenario(http)
        parties, shipment = setup.parties, setup.shipment
        async with open_stream(http, stream_path(shipment), parties.seller_headers) as stream:
            assert (await stream.next_event()).id == "1"
            idle = [await stream.next_frame() for _ in range(2)]
            await report(http, parties, shipment, status="in_transit")
            frame = await stream.next_event()
        assert_timeline_frames([frame], await timeline(http, parties, shipment))

    assert [item.lines for item in idle] == [(": keep-alive",), (": keep-alive",)]
    assert frame.id == "2"


# --- the public stream is public ------------------------------------------------------------


async def test_public_stream_carries_no_personal_data_or_ids(replica: Replica) -> None:
    http = replica.http
    setup = await scenario(http)
    parties, shipment = setup.parties, setup.shipment
    secrets = [
        RECIPIENT_NAME,
        shipment["recipient"]["email"],
        RECIPIENT_PHONE,
        ADDRESS_LINE,
        shipment["id"],
        shipment["seller_id"],
        shipment["partner"]["id"],
        parties.seller["email"],
        parties.partner["email"],
    ]

    # Lower case works too: tracking numbers are case-insensitive.
    path = f"/track/{shipment['tracking_number'].lower()}/stream"
    async with open_stream(http, path) as stream:
        frames = [await stream.next_event()]
        await report(http, parties, shipment, status="in_transit", location_zip="10001")
        frames.append(await stream.next_event())
        await report(http, parties, shipment, note="Handed to the night shift")
        frames.append(await stream.next_event())

    assert [frame.id for frame in frames] == ["1", "2", "3"]
    assert_timeline_frames(frames, await timeline(http, parties, shipment))
    for frame in stream.frames:
        for line in frame.lines:
            lowered = line.lower()
            for secret in secrets:
                assert secret.lower() not in lowered, f"{secret!r} leaked in {line!r}"
            assert "hopper" not in lowered
            assert "5550100" not in re.sub(r"\D", "", line)
    for frame in frames:
        assert set(frame.payload()) == TIMELINE_FIELDS


# --- refused changes announce nothing -------------------------------------------------------


@pytest.mark.parametrize("refusal", ["invalid_transition", "stale_if_match", "wrong_code"])
async def test_a_refused_change_publishes_nothing(
    replica: Replica, db_engine: AsyncEngine, refusal: str
) -> None:
    http = replica.http
    setup = await scenario(http)
    parties, shipment = setup.parties, setup.shipment
    shipment = await bring_to(http, db_engine, parties, shipment["id"], "out_for_delivery")
    before = shipment["timeline"][-1]["sequence"]
    assert before == 3

    async with open_stream(http, stream_path(shipment), parties.seller_headers) as stream:
        replayed = await stream.events(before)
        assert [frame.id for frame in replayed] == ["1", "2", "3"]

        if refusal == "invalid_transition":
            response = await patch_shipment(
                http, parties.partner_headers, shipment["id"], status="placed"
            )
            assert_problem(response, 409, "invalid_transition")
        elif refusal == "stale_if_match":
            response = await http.patch(
                f"/shipments/{shipment['id']}",
                json={"note": "This note was written against an old version"},
                headers={**parties.partner_headers, "If-Match": '"1"'},
            )
            assert_problem(response, 412, "version_mismatch")
        else:
            code = await delivery_code(db_engine, shipment["id"])
            wrong = f"{(int(code) + 1) % 1_000_000:06d}"
            response = await patch_shipment(
                http,
                parties.partner_headers,
                shipment["id"],
                status="delivered",
                verification_code=wrong,
            )
            assert_problem(response, 422, "invalid_verification_code")

        # An accepted change: the very next frame with data is this one, with the next number.
        await report(http, parties, shipment, note="Driver is two stops away")
        frame = await stream.next_event()

    assert frame.id == str(before + 1)
    payload = frame.payload()
    assert payload["description"] == "Driver is two stops away"
    assert payload["status"] == "out_for_delivery"
    assert_timeline_frames([frame], await timeline(http, parties, shipment))


async def test_a_tag_change_is_not_a_timeline_event(replica: Replica) -> None:
    http = replica.http
    setup = await scenario(http)
    parties, shipment = setup.parties, setup.shipment

    async with open_stream(http, public_path(shipment)) as stream:
        await stream.next_event()
        response = await http.put(
            f"/shipments/{shipment['id']}/tags",
            json={"tags": ["fragile"]},
            headers=parties.seller_headers,
        )
        assert response.status_code == 200, response.text
        await report(http, parties, shipment, status="in_transit")
        frame = await stream.next_event()

    assert frame.id == "2"
    assert frame.payload()["status"] == "in_transit"


# --- the tracking page ----------------------------------------------------------------------


SCRIPT_TAG = re.compile(r"<script\b[^>]*>", re.I)


async def test_tracking_page_in_transit_listens_to_its_stream(
    replica: Replica, db_engine: AsyncEngine
) -> None:
    http = replica.http
    setup = await scenario(http)
    shipment = await bring_to(http, db_engine, setup.parties, setup.shipment["id"], "in_transit")
    number = shipment["tracking_number"]

    response = await http.get(f"/t/{number}")

    assert response.status_code == 200
    # The page's own script file (its policy allows no inline script), and what it reads from
    # the page: where to listen, from which sequence on, and that more is to come.
    assert SCRIPT_TAG.findall(response.text) == ['<script src="/assets/tracking.js" defer>']
    live = re.search(r'<div id="live" hidden ([^>]*)>', response.text)
    assert live is not None
    assert live.group(1) == (
        f'data-tracking-number="{number}" '
        f'data-sequence="{shipment["timeline"][-1]["sequence"]}" data-final="false"'
    )
    script = (await http.get("/assets/tracking.js")).text
    assert '"/track/" + encodeURIComponent(live.dataset.trackingNumber) + "/stream"' in script
    assert 'addEventListener("timeline"' in script
    # The stream the page points at exists and is live.
    async with open_stream(http, f"/track/{number}/stream") as stream:
        assert (await stream.next_event()).id == "1"


async def test_tracking_page_of_a_final_shipment_does_not_follow_its_stream(
    replica: Replica, db_engine: AsyncEngine
) -> None:
    http = replica.http
    parties = await make_parties(http)
    for status in ("delivered", "cancelled", "returned"):
        created = await create_shipment(http, parties.seller_headers)
        shipment = await bring_to(http, db_engine, parties, created["id"], status)

        response = await http.get(f"/t/{shipment['tracking_number']}")

        assert response.status_code == 200, status
        # The script still comes (it writes the times in the reader's zone), told that nothing
        # more will come; and the page promises no updates (the browser tests watch both).
        assert SCRIPT_TAG.findall(response.text) == ['<script src="/assets/tracking.js" defer>']
        assert 'data-final="true"' in response.text, status
        assert "EventSource" not in response.text, status
        assert "updates itself" not in response.text, status
