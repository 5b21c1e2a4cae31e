"""Fixtures for fault injection: a PostgreSQL cluster and a Redis server per test, owned by it.

Each test gets a fresh cluster copied from one migrated at the start of the session (a copy and
a start take a fraction of a second), and its own redis-server with an fsynced append-only file.
The app under test runs with short deadlines, so every wait is bounded by a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from backend.cli import migrate
from backend.config import Settings
from backend.main import create_app
from tests.conftest import create_database, make_settings
from tests.faults.load import Load
from tests.faults.records import unexpected_exchanges
from tests.faults.report import report_fault, report_streams
from tests.faults.servers import (
    DATABASE_NAME,
    DurableRedis,
    OwnedPostgres,
    free_tcp_port,
    postgres_bindir,
    postgres_system_user,
    scratch_folder,
)
from tests.faults.stream_invariants import check_streams
from tests.servers import serving

# The app's deadlines under test: short, so that an outage costs seconds, not minutes. The server
# cancels a slow statement first; the client's command timeout is the backstop for a server that
# cannot answer at all (the same order as the production defaults).
POOL_TIMEOUT_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 1.0
STATEMENT_TIMEOUT_SECONDS = 2.0
COMMAND_TIMEOUT_SECONDS = 3.0
REDIS_TIMEOUT_SECONDS = 0.5
FAULT_SETTINGS: dict[str, object] = {
    "db_pool_size": 8,
    "db_max_overflow": 4,
    "db_pool_timeout_seconds": POOL_TIMEOUT_SECONDS,
    "db_connect_timeout_seconds": CONNECT_TIMEOUT_SECONDS,
    "db_statement_timeout_ms": int(STATEMENT_TIMEOUT_SECONDS * 1000),
    "db_command_timeout_seconds": COMMAND_TIMEOUT_SECONDS,
    "redis_timeout_seconds": REDIS_TIMEOUT_SECONDS,
    # Twice the Redis timeout: the test process runs the load, the streams and the app on one
    # event loop, and on a busy 2-core host a check's connect-ping-close took 0.5-0.8 s while
    # both servers were fine, so 0.5 s made readiness say "down" when nothing was.
    "health_check_timeout_seconds": 1.0,
    # The load logs in and signs up far more often than a person: no rate limit in the way.
    "token_attempts_per_ip": 1_000_000,
    "token_attempts_per_account": 1_000_000,
    "signups_per_ip": 1_000_000,
    "webhooks_allow_private": True,
    # Open streams check their token (on Redis) at each heartbeat: often, so faults meet it.
    "sse_heartbeat_seconds": 1.0,
    # Outages make every layer log warnings by design; only errors say something here.
    "log_level": "ERROR",
}
# SQLAlchemy closes an invalidated asyncpg connection gracefully first, waiting up to this long.
SQLALCHEMY_GRACEFUL_CLOSE_SECONDS = 2.0


def request_deadline_seconds(settings: Settings) -> float:
    """The longest a request may take while a dependency is down, from the app's own deadlines:
    a wait for a pooled connection, a statement that times out on a frozen server, closing that
    connection, connecting anew, two Redis round trips, and a second of slack for a busy
    machine. Longer counts as a hang."""
    return (
        settings.db_pool_timeout_seconds
        + settings.db_command_timeout_seconds
        + SQLALCHEMY_GRACEFUL_CLOSE_SECONDS
        + settings.db_connect_timeout_seconds
        + 2 * settings.redis_timeout_seconds
        + 1.0
    )


REQUEST_DEADLINE_SECONDS = request_deadline_seconds(
    Settings.model_validate({"environment": "test", **FAULT_SETTINGS})
)
# From the dependency being back to the app serving again, without a restart of the app.
RECOVERY_SECONDS = 10.0
# Bound on a whole phase of a test (warm-up, detection of an outage): a hang guard only.
PHASE_SECONDS = 30.0


@pytest.fixture(autouse=True)
def clean_state() -> None:
    """Replaces the suite's: these tests use only servers they own, never the shared ones."""


class ServerTracebacks(logging.Handler):
    """Errors with a traceback from the HTTP server or the app's last-resort handler: a
    request or a stream that failed with an unhandled exception (a 500, or a stream cut off)."""

    SOURCES = ("uvicorn", "backend.error_handlers")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.name.startswith(self.SOURCES):
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_server_tracebacks() -> Iterator[None]:
    """Fails a fault test whose served app logged an unhandled exception."""
    handler = ServerTracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    formatted = [f"{r.name}: {r.getMessage()}\n{handler.format(r)}" for r in handler.records]
    assert not formatted, "the server logged unhandled exceptions:\n" + "\n".join(formatted[:5])


@pytest.fixture(scope="session")
async def golden_postgres() -> AsyncIterator[OwnedPostgres]:
    """A stopped cluster with the migrated `shiptrack` database, copied by every test."""
    with scratch_folder("shiptrack-faults-") as root:
        cluster = OwnedPostgres(
            postgres_bindir(), root / "golden", postgres_system_user(), free_tcp_port()
        )
        cluster.initdb()
        cluster.start()
        try:
            await create_database(cluster.url("postgres"), DATABASE_NAME)
            # Alembic's env.py runs its own event loop, so it cannot run on this one.
            await asyncio.to_thread(migrate, cluster.url())
        finally:
            cluster.stop("fast")
        yield cluster


@pytest.fixture
def postgres(golden_postgres: OwnedPostgres) -> Iterator[OwnedPostgres]:
    with scratch_folder("shiptrack-pg-") as root:
        cluster = golden_postgres.copy_to(root / "cluster", free_tcp_port())
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.destroy()


@pytest.fixture
def durable_redis() -> Iterator[DurableRedis]:
    with scratch_folder("shiptrack-redis-") as root:
        server = DurableRedis(root)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
async def inspector(postgres: OwnedPostgres) -> AsyncIterator[AsyncEngine]:
    """The test's own view of the database, with short timeouts of its own."""
    engine = create_async_engine(
        postgres.url(),
        pool_pre_ping=True,
        connect_args={"timeout": 1.0, "command_timeout": 2.0},
    )
    yield engine
    await engine.dispose()


def fault_settings(database_url: str, redis_url: str, **overrides: object) -> Settings:
    return make_settings(database_url, redis_url, **{**FAULT_SETTINGS, **overrides})


@asynccontextmanager
async def served_client(
    settings: Settings,
    *,
    run_worker: bool = False,
    deadline_seconds: float = REQUEST_DEADLINE_SECONDS,
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in a real uvicorn on loopback, and a client whose timeout is the deadline.

    `run_worker`: the outbox worker runs in the same process, as in embedded mode.
    `deadline_seconds`: the longest a request may take under `settings`' own timeouts.
    """
    app = create_app(settings, run_worker=run_worker)
    async with (
        serving(app) as base_url,
        httpx.AsyncClient(
            base_url=base_url,
            # A little over the deadline, so a slow answer is told apart from a lost one.
            timeout=deadline_seconds + 2.0,
            # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout closes
            # them: a request sent on one the server is closing would get no answer at all.
            limits=httpx.Limits(
                max_connections=100, max_keepalive_connections=100, keepalive_expiry=2.0
            ),
        ) as http,
    ):
        yield http


@dataclass(frozen=True, slots=True)
class Outage:
    """Moments of a fault: injected, known to be in effect, lifted, and the app recovered."""

    injected: float
    down: float
    up: float
    recovered: float


async def wait_for_outage_seen(load: Load, down: float) -> None:
    """Until requests and the readiness probe have met the outage (so it really happened)."""
    await load.wait_for(
        lambda: load.unavailable(down) >= 3 and 503 in load.readiness(down),
        PHASE_SECONDS,
        "503s from requests and /health/ready during the outage",
    )


async def wait_for_recovery(load: Load, up: float) -> float:
    """Until readiness is 200 and writes succeed again; returns when (within RECOVERY_SECONDS)."""
    await load.wait_for(
        lambda: 200 in load.readiness(up) and load.successes(up) >= 3,
        RECOVERY_SECONDS,
        "readiness and writes to recover without restarting the app",
    )
    return time.monotonic()


def assert_outage_contract(load: Load, outage: Outage, *, dependency_down: bool = True) -> None:
    """503s only while the fault lasted, never a 500 or a hang; readiness followed reality.

    `dependency_down`: PostgreSQL or Redis was unreachable, so every readiness probe during the
    outage must be 503. Off where the dependency answered all along and only the request pool
    ran dry: readiness then says "saturated" with a 200, since taking a busy replica out of
    rotation would only push its load onto the others.
    """
    report_fault(load.exchanges, outage.injected, outage.up, outage.recovered)
    problems = unexpected_exchanges(load.exchanges, REQUEST_DEADLINE_SECONDS)
    assert not problems, f"{len(problems)} bad exchanges:\n" + "\n".join(problems[:40])

    early = [str(e) for e in load.exchanges if e.unavailable and e.finished < outage.injected]
    assert not early, "503s before the fault:\n" + "\n".join(early[:20])

    while_down = load.readiness(outage.down, finished_before=outage.up)
    assert while_down, "no readiness probe ran during the outage"
    expected = 503 if dependency_down else 200
    checks = [c for t, c in load.readiness_checks if outage.down <= t <= outage.up]
    assert set(while_down) == {expected}, (
        f"/health/ready said {while_down} during the outage: {checks}"
    )

    # Once recovered, no new request fails: dead connections were weeded out on the way.
    late = [str(e) for e in load.since(outage.recovered) if e.unavailable]
    assert not late, "503s after recovery:\n" + "\n".join(late[:20])
    assert load.successes(outage.recovered) > 0


async def assert_stream_contract(
    load: Load,
    inspector: AsyncEngine,
    injected: float,
    deadline_seconds: float = REQUEST_DEADLINE_SECONDS,
) -> None:
    """The load's live-update streams, open when the fault was injected, kept their contract
    through it (tests/faults/stream_invariants.py). Call after `load.stop()`."""
    report_streams(load.streams.followed)
    await check_streams(
        inspector,
        load.streams.followed,
        deadline_seconds,
        behind=load.streams_behind,
        open_at=[injected],
    )
