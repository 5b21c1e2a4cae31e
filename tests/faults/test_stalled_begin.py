"""A write answered 201 after a PostgreSQL stall is stored: the fault drill's lost create, step by
step, with the timings it was found with.

Two pooled connections and a 3 s command timeout. PostgreSQL freezes; two authenticated reads
take both connections, and the BEGIN of each times out (503). A create arrives while the server is
still frozen, and the server resumes. The create used to run on one of those connections: asyncpg
still counted the timed-out BEGIN as the open transaction, so the create's transaction became a
savepoint inside it, its "commit" only released the savepoint, and the row vanished when the
connection was next discarded. A connection that saw a timeout must never serve again.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.db import create_engine, create_sessionmaker
from tests.factories import account_with_token
from tests.faults.conftest import fault_settings, served_client
from tests.faults.servers import DurableRedis, OwnedPostgres
from tests.shipments.factories import DESTINATION_ZIP, shipment_body

pytestmark = pytest.mark.faults

COMMAND_TIMEOUT_SECONDS = 3.0
CREATE_SENT_AT = 3.5  # after both reads timed out, while the server is still frozen
RESUMED_AT = 5.0


async def test_a_create_sent_after_timed_out_begins_is_stored_when_acknowledged(
    postgres: OwnedPostgres, durable_redis: DurableRedis, inspector: AsyncEngine
) -> None:
    settings = fault_settings(
        postgres.url(),
        durable_redis.url,
        db_pool_size=2,
        db_max_overflow=0,
        db_command_timeout_seconds=COMMAND_TIMEOUT_SECONDS,
        # Long enough that the create waits out the freeze for a connection of its own,
        # instead of failing before the server is back.
        db_pool_timeout_seconds=10.0,
        db_connect_timeout_seconds=10.0,
    )
    async with served_client(settings) as http:
        _, seller = await account_with_token(http, "seller")
        await account_with_token(
            http, "partner", serviceable_zip_codes=[DESTINATION_ZIP], max_handling_capacity=5
        )
        # Both pooled connections open before the freeze, so the reads take them rather than
        # wait to connect.
        warm_up = [http.get("/seller/me", headers=seller) for _ in range(4)]
        assert {read.status_code for read in await asyncio.gather(*warm_up)} == {200}

        postgres.pause()
        try:
            frozen = time.monotonic()
            reads = [asyncio.create_task(http.get("/seller/me", headers=seller)) for _ in "ab"]
            await asyncio.sleep(frozen + CREATE_SENT_AT - time.monotonic())
            create = asyncio.create_task(
                http.post("/shipments", json=shipment_body(), headers=seller)
            )
            await asyncio.sleep(frozen + RESUMED_AT - time.monotonic())
        finally:
            postgres.resume()

        assert [read.status_code for read in await asyncio.gather(*reads)] == [503, 503]
        created = await create
        assert created.status_code == 201, created.text
        shipment_id = created.json()["id"]

        again = await http.get(f"/shipments/{shipment_id}", headers=seller)
        assert again.status_code == 200, again.text

    async with inspector.connect() as connection:
        stored = await connection.execute(
            text("SELECT count(*) FROM shipments WHERE id = :id"), {"id": shipment_id}
        )
        assert stored.scalar_one() == 1


async def insert_and_commit(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        await session.execute(text("INSERT INTO acknowledged VALUES (1)"))


async def test_a_session_commit_after_a_timed_out_begin_is_stored(
    postgres: OwnedPostgres, inspector: AsyncEngine
) -> None:
    """The same trap on the path SQLAlchemy runs itself (ORM sessions, the outbox worker)."""
    async with inspector.begin() as connection:
        await connection.execute(text("CREATE TABLE acknowledged (id int PRIMARY KEY)"))
    settings = fault_settings(
        postgres.url(), "redis://127.0.0.1:1", db_pool_size=1, db_max_overflow=0
    )
    engine = create_engine(settings, postgres.url())
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))  # the pooled connection is open

        postgres.pause()
        try:
            async with sessions() as session:
                with pytest.raises((TimeoutError, DBAPIError)):
                    await session.execute(text("SELECT 1"))
            # Checked out while the server is still frozen, committed once it is back.
            write = asyncio.create_task(insert_and_commit(sessions))
            await asyncio.sleep(0.5)
        finally:
            postgres.resume()
        await write
    finally:
        await engine.dispose()

    async with inspector.connect() as connection:
        stored = await connection.execute(text("SELECT count(*) FROM acknowledged"))
        assert stored.scalar_one() == 1
