"""Live-update streams as a bounded resource: they never take the Redis connections that
authentication depends on, they are capped per process and per client address, and they end
(after the terminal event, a maximum lifetime, a revoked or expired token, a lost Redis, a
shutdown) in a way the client can act on.

Streams are read from a real uvicorn on 127.0.0.1 (see test_live_updates.py). Client addresses
are told apart with X-Forwarded-For, which uvicorn believes from 127.0.0.1 as it would from our
own proxy. No assertion is ever made about how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.accounts.tokens import TokenCodec
from backend.accounts.tools import AccountTools
from backend.context import app_context
from backend.main import create_app
from backend.shipments import stream_hub
from backend.shipments.tools import shut_down_streams
from tests.accounts.test_account_emails import reset_token_for
from tests.assertions import assert_problem
from tests.conftest import OwnedRedis, make_settings
from tests.factories import bearer, log_in
from tests.servers import serving
from tests.shipments.factories import bring_to, delivery_code
from tests.shipments.test_live_updates import (
    SAFETY_SECONDS,
    EventStream,
    Replica,
    open_stream,
    public_path,
    refused,
    report,
    running_replica,
    scenario,
    stream_path,
)
from tests.sse import Frame, parse_frame

# Enough to prove the point in a suite that runs in minutes; bench/stream_memory.py opens 10,000.
MANY_STREAMS = 1000
OPENING_AT_ONCE = 50


async def rest_of_stream(stream: EventStream) -> list[Frame]:
    """Every frame until the server ends the stream (bounded by the safety timeout)."""
    frames: list[Frame] = []
    lines: list[str] = []
    async with asyncio.timeout(SAFETY_SECONDS):
        async for line in stream._lines:
            if line:
                lines.append(line)
            elif lines:
                frames.append(parse_frame(lines))
                lines = []
    return frames


def forwarded_for(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def many_connections_client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=SAFETY_SECONDS * 3,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=10),
    )


async def open_many(
    stack: AsyncExitStack, http: httpx.AsyncClient, path: str, count: int
) -> list[EventStream]:
    """`count` open streams, each past its first event (so admitted, subscribed, caught up)."""
    gate = asyncio.Semaphore(OPENING_AT_ONCE)

    async def one() -> EventStream:
        async with gate:
            stream = await stack.enter_async_context(open_stream(http, path))
            await stream.next_event()
            return stream

    return list(await asyncio.gather(*(one() for _ in range(count))))


@pytest.fixture(scope="module")
async def replica(database_url: str, redis_url: str) -> AsyncIterator[Replica]:
    async with running_replica(database_url, redis_url) as running:
        yield running


# --- streams cost no Redis connection ---------------------------------------------------------


async def test_logins_and_reads_work_with_a_thousand_idle_streams_open(
    database_url: str, redis_url: str
) -> None:
    """Before: each stream held a connection of the shared Redis pool (100), so 100 streams
    turned every login and authenticated request into a 503."""
    async with running_replica(
        database_url, redis_url, streams_per_client=MANY_STREAMS, sse_heartbeat_seconds=5.0
    ) as replica:
        setup = await scenario(replica.http)
        parties, shipment = setup.parties, setup.shipment
        async with (
            many_connections_client(replica.base_url) as crowd,
            AsyncExitStack() as stack,
        ):
            streams = await open_many(stack, crowd, public_path(shipment), MANY_STREAMS)

            token = await log_in(replica.http, "seller", parties.seller["email"])
            read = await replica.http.get(f"/shipments/{shipment['id']}", headers=bearer(token))
            me = await replica.http.get("/seller/me", headers=parties.seller_headers)
            await report(replica.http, parties, shipment, status="in_transit")
            heard = [await stream.next_event() for stream in (streams[0], streams[-1])]

    assert read.status_code == 200, read.text
    assert me.status_code == 200, me.text
    assert [frame.id for frame in heard] == ["2", "2"]


# --- caps -------------------------------------------------------------------------------------


async def test_streams_beyond_the_per_address_cap_get_429(
    database_url: str, redis_url: str
) -> None:
    async with running_replica(database_url, redis_url, streams_per_client=2) as replica:
        http = replica.http
        setup = await scenario(http)
        path = public_path(setup.shipment)
        crowded, other = forwarded_for("10.1.1.1"), forwarded_for("10.2.2.2")
        async with open_stream(http, path, crowded), open_stream(http, path, crowded):
            response = await refused(http, path, crowded)
            # Another address is not affected.
            async with open_stream(http, path, other) as stream:
                assert (await stream.next_event()).id == "1"
        # A stream that ended gives its place back.
        async with open_stream(http, path, crowded) as stream:
            assert (await stream.next_event()).id == "1"

    assert_problem(response, 429, "too_many_streams")
    assert int(response.headers["retry-after"]) > 0


async def test_streams_beyond_the_per_process_cap_get_503(
    database_url: str, redis_url: str
) -> None:
    async with running_replica(database_url, redis_url, streams_per_process=2) as replica:
        http = replica.http
        setup = await scenario(http)
        path = public_path(setup.shipment)
        async with (
            open_stream(http, path, forwarded_for("10.1.1.1")),
            open_stream(http, stream_path(setup.shipment), setup.parties.seller_headers),
        ):
            response = await refused(http, path, forwarded_for("10.3.3.3"))
            # Only streams are refused: the API itself still answers.
            read = await http.get(
                f"/shipments/{setup.shipment['id']}", headers=setup.parties.seller_headers
            )

    assert_problem(response, 503, "streams_unavailable")
    assert int(response.headers["retry-after"]) > 0
    assert read.status_code == 200


# --- how streams end --------------------------------------------------------------------------


async def test_a_stream_ends_after_the_terminal_event_and_a_resume_gets_204(
    replica: Replica, db_engine: AsyncEngine
) -> None:
    http = replica.http
    setup = await scenario(http)
    parties = setup.parties
    shipment = await bring_to(http, db_engine, parties, setup.shipment["id"], "out_for_delivery")

    async with open_stream(http, public_path(shipment)) as stream:
        await stream.events(3)
        code = await delivery_code(db_engine, shipment["id"])
        await report(http, parties, shipment, status="delivered", verification_code=code)
        last = await stream.next_event()
        after = await rest_of_stream(stream)
    # Resuming after the terminal event: nothing more will come, and EventSource stops on 204.
    resumed = await refused(http, public_path(shipment), {"Last-Event-ID": last.id or ""})
    # A new listener still gets the whole story, then the stream ends by itself.
    async with open_stream(http, stream_path(shipment), parties.seller_headers) as stream:
        replay = await rest_of_stream(stream)

    assert last.payload()["status"] == "delivered"
    assert after == []
    assert resumed.status_code == 204
    assert [frame.id for frame in replay if frame.is_event] == ["1", "2", "3", "4"]


async def test_a_stream_ends_at_its_maximum_lifetime_with_a_retry_hint(
    database_url: str, redis_url: str
) -> None:
    async with running_replica(database_url, redis_url, stream_max_lifetime_seconds=0.5) as short:
        http = short.http
        setup = await scenario(http)
        async with open_stream(http, public_path(setup.shipment)) as stream:
            assert (await stream.next_event()).id == "1"
            ending = await rest_of_stream(stream)
        await report(http, setup.parties, setup.shipment, status="in_transit")
        # The client resumes where it was and misses nothing.
        async with open_stream(
            http, public_path(setup.shipment), {"Last-Event-ID": "1"}
        ) as resumed:
            frame = await resumed.next_event()

    assert ending, "the stream ended without a word"
    assert ending[-1].retry is not None
    assert int(ending[-1].retry) > 0
    assert frame.id == "2"


async def test_a_stream_ends_when_its_token_is_revoked(replica: Replica) -> None:
    http = replica.http
    setup = await scenario(http)
    parties, shipment = setup.parties, setup.shipment
    token = await log_in(http, "seller", parties.seller["email"])

    async with open_stream(http, stream_path(shipment), bearer(token)) as stream:
        assert (await stream.next_event()).id == "1"
        logout = await http.post("/seller/logout", headers=bearer(token))
        ending = await rest_of_stream(stream)
    again = await refused(http, stream_path(shipment), bearer(token))

    assert logout.status_code == 204
    assert ending[-1].comments == (": token revoked",)
    assert_problem(again, 401, "invalid_token")


async def test_a_stream_ends_when_the_password_is_reset(
    replica: Replica, db_engine: AsyncEngine
) -> None:
    http = replica.http
    setup = await scenario(http)
    parties, shipment = setup.parties, setup.shipment
    token = await log_in(http, "seller", parties.seller["email"])
    reset_token = await reset_token_for(http, db_engine, "seller", parties.seller["email"])

    async with open_stream(http, stream_path(shipment), bearer(token)) as stream:
        assert (await stream.next_event()).id == "1"
        reset = await http.post(
            "/seller/password/reset",
            json={"token": reset_token, "new_password": "a brand new passphrase"},
        )
        ending = await rest_of_stream(stream)
    again = await refused(http, stream_path(shipment), bearer(token))

    assert reset.status_code == 204
    assert ending[-1].comments == (": token revoked",)
    assert_problem(again, 401, "invalid_token")


async def test_a_stream_ends_when_its_token_expires(database_url: str, redis_url: str) -> None:
    settings = make_settings(database_url, redis_url, sse_heartbeat_seconds=30.0)
    app = create_app(settings)
    async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        setup = await scenario(http)
        seller_token = setup.parties.seller_headers["Authorization"].split()[1]
        claims = app_context(app).part(AccountTools).token_codec.decode(seller_token)
        # A token of the same account that outlives the stream's start by about a second.
        short = settings.model_copy(update={"access_token_ttl_seconds": 2})
        brief = TokenCodec(short).issue(claims.account_id, claims.kind, claims.token_version)
        async with open_stream(http, stream_path(setup.shipment), bearer(brief.token)) as stream:
            ending = await rest_of_stream(stream)

    assert [frame.id for frame in ending if frame.is_event] == ["1"]
    assert ending[-1].comments == (": token expired",)


# --- Redis away -------------------------------------------------------------------------------


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def hub_warnings() -> Iterator[list[logging.LogRecord]]:
    """What the stream hub logs (create_app replaces the root handlers, so caplog cannot)."""
    handler = RecordingHandler()
    logger = logging.getLogger(stream_hub.__name__)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@asynccontextmanager
async def replica_on(database_url: str, redis: OwnedRedis) -> AsyncIterator[Replica]:
    async with running_replica(database_url, redis.url, redis_timeout_seconds=0.5) as replica:
        yield replica


async def test_losing_redis_ends_streams_with_a_retry_hint_and_one_warning(
    database_url: str, owned_redis: OwnedRedis
) -> None:
    async with replica_on(database_url, owned_redis) as replica:
        http = replica.http
        setup = await scenario(http)
        path = public_path(setup.shipment)
        with hub_warnings() as records:
            async with AsyncExitStack() as stack:
                streams = [
                    await stack.enter_async_context(open_stream(http, path)) for _ in range(5)
                ]
                for stream in streams:
                    await stream.next_event()
                owned_redis.stop()
                endings = [await rest_of_stream(stream) for stream in streams]
            refused_while_down = await refused(http, path)

            owned_redis.start()
            reopened = await reopened_stream(http, path)

    for ending in endings:
        assert ending[-1].retry is not None, ending
    assert_problem(refused_while_down, 503, "streams_unavailable")
    assert int(refused_while_down.headers["retry-after"]) > 0
    lost = [record for record in records if "lost" in record.getMessage()]
    assert len(lost) == 1, [record.getMessage() for record in records]
    assert all(record.exc_info is None for record in records)
    assert reopened == "1"


async def reopened_stream(http: httpx.AsyncClient, path: str) -> str | None:
    """The first event id of a stream opened once live updates are back (503s until then)."""
    async with asyncio.timeout(SAFETY_SECONDS):
        while True:
            response = await http.send(http.build_request("GET", path), stream=True)
            if response.status_code == 503:
                await response.aclose()
                await asyncio.sleep(0.1)
                continue
            try:
                return (await EventStream(response).next_event()).id
            finally:
                await response.aclose()


async def test_redis_down_at_startup_refuses_streams_with_503(
    database_url: str, redis_url: str, owned_redis: OwnedRedis
) -> None:
    async with running_replica(database_url, redis_url) as healthy:
        setup = await scenario(healthy.http)
    owned_redis.stop()
    async with replica_on(database_url, owned_redis) as replica:
        response = await refused(replica.http, public_path(setup.shipment))

    assert_problem(response, 503, "streams_unavailable")


# --- shutdown ---------------------------------------------------------------------------------


async def test_shutdown_ends_every_stream_with_a_retry_hint(
    database_url: str, redis_url: str
) -> None:
    # A thousand streams and a real SIGTERM: test_stream_shutdown.py.
    app = create_app(make_settings(database_url, redis_url))
    async with (
        serving(app, graceful_seconds=60) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=SAFETY_SECONDS) as http,
        many_connections_client(base_url) as crowd,
        AsyncExitStack() as stack,
    ):
        setup = await scenario(http)
        streams = await open_many(stack, crowd, public_path(setup.shipment), 20)
        shut_down_streams(app)  # what SIGTERM does first (backend/cli.py)
        endings = await asyncio.gather(*(rest_of_stream(stream) for stream in streams))
        # New streams are refused while the server winds down; other requests still work.
        late = await refused(http, public_path(setup.shipment))
        read = await http.get(
            f"/shipments/{setup.shipment['id']}", headers=setup.parties.seller_headers
        )

    assert all(ending and ending[-1].retry is not None for ending in endings)
    assert_problem(late, 503, "streams_unavailable")
    assert read.status_code == 200


@pytest.fixture(autouse=True)
def _generous_open_files() -> None:
    """A thousand streams are two thousand sockets in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 20_000)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
