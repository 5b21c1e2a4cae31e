"""SIGTERM to `shiptrack serve` while writes are in flight.

The server runs as a real process against this test's PostgreSQL and Redis. To have writes
provably in flight when the signal arrives, the test holds every partner row locked: creates
(which claim a partner's capacity) then wait inside PostgreSQL, visible in pg_stat_activity.
Live-update streams open at the signal must end at once with a `retry:` hint (their clients
resume on another replica), never be cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.factories import account_with_token
from tests.faults.invariants import check_invariants
from tests.faults.records import Ledger
from tests.faults.servers import (
    START_SECONDS,
    DurableRedis,
    OwnedPostgres,
    free_tcp_port,
    scratch_folder,
    wait_until,
)
from tests.faults.streams import FollowedShipment, connect_once
from tests.shipments.factories import DESTINATION_ZIP, shipment_body

pytestmark = pytest.mark.faults

REPOSITORY = Path(__file__).resolve().parents[2]
DRAIN_SECONDS = 1.0
GRACEFUL_SECONDS = 3
# Beyond drain + graceful shutdown: closing the pool and Redis, and the interpreter's exit.
EXIT_SLACK_SECONDS = 5.0
IN_FLIGHT = 6
# Anything that waits on the server (a hang guard, never a measurement).
WAIT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def shiptrack_serve(postgres: OwnedPostgres, redis: DurableRedis) -> Iterator[ServerProcess]:
    """`shiptrack serve` in its own process, configured only through its environment."""
    with scratch_folder("shiptrack-serve-") as folder:
        port = free_tcp_port()
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TEST_")},
            "PYTHONPATH": str(REPOSITORY),
            "ENVIRONMENT": "dev",
            "PARTNER_APPROVAL": "auto",  # its partners take shipments at once
            "DATABASE_URL": postgres.url(),
            "REDIS_URL": redis.url,
            "DATA_DIR": str(folder / "data"),
            "SHUTDOWN_DRAIN_SECONDS": str(DRAIN_SECONDS),
            "GRACEFUL_SHUTDOWN_SECONDS": str(GRACEFUL_SECONDS),
            # The writes wait on the test's lock for seconds: no timeout may end them first.
            "DB_STATEMENT_TIMEOUT_MS": "60000",
            "DB_COMMAND_TIMEOUT_SECONDS": "60",
            "BCRYPT_ROUNDS": "4",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "console",
        }
        log = folder / "serve.log"
        with log.open("wb") as output:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)],
                cwd=folder,  # no .env file of the checkout is read
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        server = ServerProcess(process, port, log)
        try:
            yield server
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=WAIT_SECONDS)


async def wait_until_ready(server: ServerProcess, http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        assert server.process.poll() is None, f"shiptrack serve exited:\n{server.output()}"
        with contextlib.suppress(httpx.TransportError):
            if (await http.get("/health/ready")).status_code == 200:
                return
        assert time.monotonic() < deadline, (
            f"shiptrack serve never became ready:\n{server.output()}"
        )
        await asyncio.sleep(0.05)


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except OSError:
        return True


async def waiting_on_lock(inspector: AsyncEngine) -> int:
    """App connections blocked on a lock right now."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'shiptrack' AND wait_event_type = 'Lock'"
    )
    async with inspector.connect() as connection:
        return int((await connection.execute(query)).scalar_one())


@contextlib.asynccontextmanager
async def partners_locked(inspector: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Every partner row locked by another client until the block ends (or it rolls back)."""
    async with inspector.connect() as blocker:
        await blocker.execute(text("SELECT id FROM partners FOR UPDATE"))
        try:
            yield blocker
        finally:
            await blocker.rollback()


async def exited_within(process: subprocess.Popen[bytes], limit_seconds: float) -> int | None:
    """The exit code if the process ends within `limit_seconds`, else None."""
    deadline = time.monotonic() + limit_seconds
    while process.poll() is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.02)
    return process.returncode


async def wait_for_draining(http: httpx.AsyncClient) -> None:
    """Readiness turns 503 "draining" while the server still answers, before the listener closes."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        ready = await http.get("/health/ready")
        if ready.status_code == 503 and ready.json()["status"] == "draining":
            return
        assert ready.status_code == 200, ready.text
        assert time.monotonic() < deadline, "readiness never said draining"
        await asyncio.sleep(0.02)


async def poll_lock_waiters(inspector: AsyncEngine, count: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while await waiting_on_lock(inspector) < count:
        assert time.monotonic() < deadline, f"fewer than {count} creates waiting on the lock"
        await asyncio.sleep(0.02)


async def seller_and_partner(http: httpx.AsyncClient) -> tuple[dict[str, str], dict[str, str]]:
    """A seller's and a partner's auth headers; the partner takes the seller's shipments."""
    _, seller_headers = await account_with_token(http, "seller")
    _, partner_headers = await account_with_token(
        http, "partner", serviceable_zip_codes=[DESTINATION_ZIP], max_handling_capacity=50
    )
    return seller_headers, partner_headers


async def seller_with_a_partner(http: httpx.AsyncClient) -> dict[str, str]:
    """A seller's auth headers, with a partner to take its shipments."""
    seller_headers, _ = await seller_and_partner(http)
    return seller_headers


async def streams_following(
    http: httpx.AsyncClient,
    shipment: dict[str, Any],
    seller_headers: dict[str, str],
    partner_headers: dict[str, str],
) -> tuple[list[FollowedShipment], list[asyncio.Task[float | None]]]:
    """The shipment's seller, partner and public streams, open (each has heard its first event)."""
    own = f"/shipments/{shipment['id']}/stream"
    streams = [
        FollowedShipment("seller", "seller", shipment["id"], own, seller_headers),
        FollowedShipment("partner", "partner", shipment["id"], own, partner_headers),
        FollowedShipment(
            "public", "public", shipment["id"], f"/track/{shipment['tracking_number']}/stream", {}
        ),
    ]
    reading = [asyncio.create_task(connect_once(http, stream)) for stream in streams]
    await wait_until(
        # Or one ended before it heard anything: the assertions after the signal say why.
        lambda: all(s.events for s in streams) or any(t.done() for t in reading),
        WAIT_SECONDS,
        "the streams to open",
    )
    return streams, reading


def assert_ended_with_a_retry_hint(streams: list[FollowedShipment]) -> None:
    endings = [(str(s), [str(c) for c in s.connections]) for s in streams]
    for stream in streams:
        [connection] = stream.connections
        assert connection.status == 200, endings
        assert connection.ending == "retry", endings
        assert not connection.traceback, endings
        assert stream.events == [("1", 1, "placed")], endings


async def creates_waiting_on_the_lock(
    http: httpx.AsyncClient, inspector: AsyncEngine, seller_headers: dict[str, str]
) -> list[asyncio.Task[httpx.Response]]:
    """IN_FLIGHT creates, each inside PostgreSQL, waiting on the partner rows' lock."""
    creates = [
        asyncio.create_task(http.post("/shipments", json=shipment_body(), headers=seller_headers))
        for _ in range(IN_FLIGHT)
    ]
    await poll_lock_waiters(inspector, IN_FLIGHT)
    return creates


async def test_sigterm_lets_in_flight_writes_finish(
    postgres: OwnedPostgres, durable_redis: DurableRedis, inspector: AsyncEngine
) -> None:
    ledger = Ledger()
    with shiptrack_serve(postgres, durable_redis) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as http:
            await wait_until_ready(server, http)
            seller_headers, partner_headers = await seller_and_partner(http)
            followed = await http.post("/shipments", json=shipment_body(), headers=seller_headers)
            assert followed.status_code == 201, followed.text
            ledger.shipment(followed.json()["id"]).ack(followed.json())
            streams, reading = await streams_following(
                http, followed.json(), seller_headers, partner_headers
            )

            async with partners_locked(inspector):
                creates = await creates_waiting_on_the_lock(http, inspector, seller_headers)

                server.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                # Streams end first, at once, so only real requests are left for the grace period.
                async with asyncio.timeout(WAIT_SECONDS):
                    await asyncio.gather(*reading)
                assert_ended_with_a_retry_hint(streams)
                # Draining: still serving, but telling the load balancer to go elsewhere.
                await wait_for_draining(http)
                # Then the listener closes while the creates are still waiting.
                await wait_until(
                    lambda: refuses_connections(server.port), WAIT_SECONDS, "the listener to close"
                )
                assert not any(task.done() for task in creates)
                assert server.process.poll() is None
            # The lock is gone: the creates finish on their open connections.

            responses = await asyncio.gather(*creates)
            exit_code = await exited_within(
                server.process, DRAIN_SECONDS + GRACEFUL_SECONDS + EXIT_SLACK_SECONDS
            )
            exited = time.monotonic() - signalled

            assert [r.status_code for r in responses] == [201] * IN_FLIGHT, [
                r.text for r in responses
            ]
            for response in responses:
                ledger.shipment(response.json()["id"]).ack(response.json())
            assert exit_code == 0, f"exit code {exit_code} after {exited:.1f}s:\n{server.output()}"
            # A new request is refused at the door (nothing reached the app), not half-served.
            with pytest.raises(httpx.ConnectError):
                await http.post("/shipments", json=shipment_body(), headers=seller_headers)
        log = server.output()

    assert "Traceback" not in log, log
    await check_invariants(inspector, ledger)


async def test_sigterm_bounds_a_write_stuck_past_the_graceful_timeout(
    postgres: OwnedPostgres, durable_redis: DurableRedis, inspector: AsyncEngine
) -> None:
    ledger = Ledger()
    with shiptrack_serve(postgres, durable_redis) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as http:
            await wait_until_ready(server, http)
            seller_headers = await seller_with_a_partner(http)

            async with partners_locked(inspector):
                creates = await creates_waiting_on_the_lock(http, inspector, seller_headers)

                server.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                # The lock outlives the graceful timeout: the process must still end in time.
                exit_code = await exited_within(
                    server.process, DRAIN_SECONDS + GRACEFUL_SECONDS + EXIT_SLACK_SECONDS
                )
                exited = time.monotonic() - signalled
                outcomes = await asyncio.gather(*creates, return_exceptions=True)

            assert exit_code is not None, f"still running after {exited:.1f}s:\n{server.output()}"
            assert exit_code == 0, f"exit code {exit_code}:\n{server.output()}"

    # The cut-off creates left nothing behind: no shipment, no capacity taken.
    await check_invariants(inspector, ledger)
    async with inspector.connect() as connection:
        stored = await connection.scalar(text("SELECT count(*) FROM shipments"))
        taken = await connection.scalar(text("SELECT sum(active_shipments) FROM partners"))
    assert (stored, taken) == (0, 0)
    # And the clients were told so: no response at all, or a 503 (retry elsewhere); never a
    # 500, which says the server failed, and never a 201 for work that was not kept.
    statuses = [o.status_code if isinstance(o, httpx.Response) else type(o) for o in outcomes]
    for outcome in outcomes:
        if isinstance(outcome, httpx.Response):
            assert outcome.status_code == 503, f"{statuses}: {outcome.text}"
        else:
            assert isinstance(outcome, httpx.TransportError), repr(outcome)
