"""Fixtures: real PostgreSQL and Redis for every test.

With TEST_DATABASE_URL and TEST_REDIS_URL set, tests use those servers (a fresh database is
created for the run and dropped after it). Without them, embedded PostgreSQL and Redis start
under `.data/test`, so `make test` works on a machine with neither installed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from backend.cli import migrate
from backend.config import Settings
from backend.context import app_context
from backend.embedded import embedded_services, start_redis
from backend.main import create_app
from backend.models import metadata

TEST_DATA_DIR = Path(__file__).resolve().parent.parent / ".data" / "test"
# The apps under test serve /metrics to this bearer token.
METRICS_TOKEN = "metrics-scraper-token-for-tests"


class OffMachineConnection(ConnectionRefusedError):
    """A test tried to connect somewhere other than this machine's loopback."""


class LoopbackGuard:
    """Refuses, and remembers, every socket connection a test makes to an address that is not
    loopback or a Unix socket: a literal public address in a test is a real host somebody owns,
    and a worker running during the test would send it customers' test data.

    It wraps `socket.socket.connect` and `connect_ex`, which asyncio's event loop, asyncpg,
    redis-py, httpx and aiosmtplib all go through. Refusing alone is not enough: code under test
    may take the refusal for an ordinary one and carry on (a webhook attempt logged as failed),
    so the attempt also fails the test (`stay_on_this_machine`).
    """

    def __init__(self) -> None:
        self.violations: list[str] = []
        self._connect = socket.socket.connect
        self._connect_ex = socket.socket.connect_ex

    def check(self, sock: socket.socket, address: object) -> None:
        if sock.family == socket.AF_UNIX:
            return
        host = address[0] if isinstance(address, tuple) else address
        if host == "localhost":
            return
        try:
            loopback = ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            loopback = False  # a name: connect() would resolve it, so it could go anywhere
        if not loopback:
            self.violations.append(repr(address))
            raise OffMachineConnection(f"tests connect only to loopback, not to {address!r}")

    def install(self) -> None:
        guard = self

        def connect(sock: socket.socket, address: object) -> None:
            guard.check(sock, address)
            guard._connect(sock, address)  # type: ignore[arg-type]

        def connect_ex(sock: socket.socket, address: object) -> int:
            guard.check(sock, address)
            return guard._connect_ex(sock, address)  # type: ignore[arg-type]

        socket.socket.connect = connect  # type: ignore[method-assign,assignment]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        socket.socket.connect = self._connect  # type: ignore[method-assign]
        socket.socket.connect_ex = self._connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def loopback_guard() -> Iterator[LoopbackGuard]:
    guard = LoopbackGuard()
    guard.install()
    yield guard
    guard.uninstall()


@pytest.fixture(autouse=True)
def stay_on_this_machine(loopback_guard: LoopbackGuard) -> Iterator[None]:
    """Fails any test that tried to connect off this machine, even if the code under test
    swallowed the refusal."""
    loopback_guard.violations.clear()
    yield
    assert not loopback_guard.violations, (
        f"connections off this machine attempted: {loopback_guard.violations}"
    )


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    """(admin database URL, Redis URL) of the servers the run uses."""
    database_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    if database_url and redis_url:
        yield database_url, redis_url
        return
    with embedded_services(TEST_DATA_DIR) as services:
        yield database_url or services.database_url, redis_url or services.redis_url


def database_url_named(admin_url: str, name: str) -> str:
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def create_database(admin_url: str, name: str) -> str:
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()
    return database_url_named(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
async def database_url(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    """A database built by running the migrations, private to this test run."""
    admin_url = server_urls[0]
    name = f"shiptrack_test_{uuid.uuid4().hex[:12]}"
    url = await create_database(admin_url, name)
    try:
        # Alembic's env.py runs its own event loop, so it cannot run on this one.
        await asyncio.to_thread(migrate, url)
        yield url
    finally:
        await drop_database(admin_url, name)


@pytest.fixture(scope="session")
def redis_url(server_urls: tuple[str, str]) -> str:
    return server_urls[1]


def make_settings(database_url: str, redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "database_url": database_url,
        "redis_url": redis_url,
        "bcrypt_rounds": 4,  # the real cost is exercised where timing matters
        # Partners get shipments as soon as they sign up, where a test is not about approval;
        # tests of approval itself build their app with "manual" (tests/accounts/).
        "partner_approval": "auto",
        "log_format": "console",
        "log_level": "WARNING",
        "metrics_token": METRICS_TOKEN,
        **overrides,
    }
    # Validated like environment input (model_validate reads neither the environment nor `.env`).
    return Settings.model_validate(values)


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(database_url, redis_url)


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@asynccontextmanager
async def running_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client for an app built by the test itself, with its lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@pytest.fixture(scope="session")
async def db_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A separate engine for tests to look at what is stored, independent of the app's pool."""
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
async def clean_state(db_engine: AsyncEngine, redis: Redis) -> None:
    """Every test starts from empty tables and an empty Redis database."""
    tables = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
    async with db_engine.begin() as connection:
        await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    await redis.flushdb()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def count_rows(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as connection:
        query = text(f'SELECT count(*) FROM "{table}"')  # noqa: S608 - table names from tests
        return int((await connection.execute(query)).scalar_one())


class OwnedRedis:
    """A Redis server one test owns, so that it can stop and restart it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = f"unix://{(folder / 'redis.sock').resolve()}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = start_redis(self.folder, persistent=False)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@pytest.fixture
def owned_redis(tmp_path: Path) -> Iterator[OwnedRedis]:
    server = OwnedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class StatementLog:
    """SQL statements the app sent to PostgreSQL while recording."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def record(self, *args: object) -> None:
        # before_cursor_execute(conn, cursor, statement, parameters, context, executemany)
        self.statements.append(str(args[2]))

    def queries(self) -> list[str]:
        """What was sent, less transaction control (BEGIN/COMMIT/ROLLBACK)."""
        control = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
        return [s for s in self.statements if not s.lstrip().upper().startswith(control)]


@pytest.fixture
def sql_log(app: FastAPI) -> Iterator[StatementLog]:
    """Records every statement the app's engine executes during the test."""
    log = StatementLog()
    engine = app_context(app).engine.sync_engine
    event.listen(engine, "before_cursor_execute", log.record)
    yield log
    event.remove(engine, "before_cursor_execute", log.record)
