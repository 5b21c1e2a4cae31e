"""Retention: what the worker deletes, what it keeps, and how (backend/retention.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from backend.context import app_context
from backend.retention import RetentionPurge, retained_kinds
from tests.conftest import count_rows
from tests.factories import api_key_headers
from tests.outbox.conftest import (
    WorkerFactory,
    database_now,
    make_worker,  # noqa: F401 - a fixture
    smtp_server,  # noqa: F401 - a fixture
    worker_settings,  # noqa: F401 - a fixture
)
from tests.shipments.factories import Parties, make_parties, shipment_body
from tests.webhooks.receiver import register_endpoint

# A literal address needs no DNS lookup; no worker runs in the tests that register it.
PUBLIC_URL = "https://93.184.215.14/hooks/shiptrack"
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


async def execute(engine: AsyncEngine, sql: str, **parameters: Any) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(sql), parameters)


async def ids(engine: AsyncEngine, sql: str, **parameters: Any) -> set[str]:
    """The first column of what `sql` returns (committed, for an INSERT … RETURNING)."""
    async with engine.begin() as connection:
        return {str(row[0]) for row in await connection.execute(text(sql), parameters)}


async def age(engine: AsyncEngine, table: str, column: str, row_id: Any, by: timedelta) -> None:
    """Move a row's timestamp `by` into the past, as if it had been written that long ago."""
    key = "key" if table == "idempotency_keys" else "id"
    await execute(
        engine,
        f"UPDATE {table} SET {column} = now() - CAST(:by AS interval) WHERE {key} = :row_id",  # noqa: S608
        by=by,
        row_id=row_id,
    )


async def add_outbox_rows(
    engine: AsyncEngine, count: int, *, status: str, older_than_now_by: timedelta
) -> set[str]:
    """`count` email rows in `status`, written (and sent, for sent ones) that long ago, a
    second apart, oldest first."""
    return await ids(
        engine,
        "INSERT INTO outbox_messages (id, kind, payload, status, attempts, next_attempt_at,"
        " sent_at, created_at)"
        " SELECT gen_random_uuid(), 'email', '{}'::jsonb, :status, 1, stamp,"
        "  CASE WHEN CAST(:sent AS boolean) THEN stamp END, stamp"
        " FROM (SELECT now() - CAST(:by AS interval)"
        "   - make_interval(secs => CAST(:count AS int) - n) AS stamp"
        "  FROM generate_series(1, CAST(:count AS int)) AS n) AS stamps"
        " RETURNING id",
        status=status,
        sent=status == "sent",
        by=older_than_now_by,
        count=count,
    )


async def outbox_ids(engine: AsyncEngine) -> set[str]:
    return await ids(engine, "SELECT id FROM outbox_messages")


async def until_gone(engine: AsyncEngine, rows: set[str], *, within: float = 10) -> None:
    """Wait until none of these outbox rows is left; `within` guards against hanging."""
    async with asyncio.timeout(within):
        while True:
            if not rows & await outbox_ids(engine):
                return
            await asyncio.sleep(0.02)  # rows in PostgreSQL: polled


async def create_with_key(
    client: httpx.AsyncClient, parties: Parties, key: str, reference: str
) -> httpx.Response:
    """POST /shipments with a body that is the same for the same reference."""
    recipient = {"name": "Grace Hopper", "email": f"{reference}@example.com"}
    return await client.post(
        "/shipments",
        json=shipment_body(reference=reference, recipient=recipient),
        headers={**parties.seller_headers, "Idempotency-Key": key},
    )


def purge_for(app: FastAPI, settings: Settings, batch_size: int = 1000) -> RetentionPurge:
    return RetentionPurge(settings, app_context(app).sessionmaker, batch_size=batch_size)


async def recorded_test_emails(
    client: httpx.AsyncClient, parties: Parties, count: int
) -> list[str]:
    """The ids of the emails recorded for `count` new test shipments, oldest first."""
    test_key = await api_key_headers(client, parties.seller_headers, mode="test")
    for _ in range(count):
        created = await client.post("/shipments", json=shipment_body(), headers=test_key)
        assert created.status_code == 201, created.text
    listed = await client.get("/test/emails", headers=test_key)
    return [email["id"] for email in reversed(listed.json()["items"])]


async def test_defaults_window_each_kind_as_documented(settings: Settings) -> None:
    windows = {kind.name: kind.age for kind in retained_kinds(settings)}
    assert windows == {
        "webhook delivery attempts": 30 * DAY,
        "events": 30 * DAY,
        "sent outbox messages": 7 * DAY,
        "dead outbox messages": 30 * DAY,
        "recorded test emails": 7 * DAY,
        "idempotency keys": 24 * HOUR,
    }


async def test_rows_past_their_window_go_and_newer_ones_stay_for_each_kind(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    endpoint = await register_endpoint(client, parties.seller_headers, PUBLIC_URL)
    old = await create_with_key(client, parties, "key-old", "order-old")
    new = await create_with_key(client, parties, "key-new", "order-new")
    assert old.status_code == new.status_code == 201
    feed = (await client.get("/events", headers=parties.seller_headers)).json()["items"]
    old_event, new_event = feed[0]["id"], feed[1]["id"]

    # Events: one just past the feed's 30 days, one just inside.
    await age(db_engine, "events", "created_at", old_event, 30 * DAY + HOUR)
    await age(db_engine, "events", "created_at", new_event, 30 * DAY - HOUR)
    # Delivery attempts: of the new event, one past 30 days and one inside; of the old event, a
    # recent one, which goes with its event.
    attempts: dict[str, set[str]] = {}
    for name, event_id, ago in (
        ("past", new_event, 30 * DAY + HOUR),
        ("inside", new_event, 30 * DAY - HOUR),
        ("of the old event", old_event, HOUR),
    ):
        attempts[name] = await ids(
            db_engine,
            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, attempt,"
            " succeeded, status_code, duration_ms, created_at)"
            " VALUES (gen_random_uuid(), :endpoint, :event, 'shipment.created', 1, false, 503,"
            " 40, now() - CAST(:ago AS interval)) RETURNING id",
            endpoint=endpoint["id"],
            event=event_id,
            ago=ago,
        )
    # The outbox: sent rows after 7 days, dead ones after 30, pending ones never.
    await execute(db_engine, "DELETE FROM outbox_messages")
    sent_past = await add_outbox_rows(db_engine, 1, status="sent", older_than_now_by=7 * DAY + HOUR)
    sent_inside = await add_outbox_rows(db_engine, 1, status="sent", older_than_now_by=6 * DAY)
    dead_past = await add_outbox_rows(
        db_engine, 1, status="dead", older_than_now_by=30 * DAY + HOUR
    )
    # Dead for 8 days: a sent row that old would be gone; a dead one is kept for inspection.
    dead_inside = await add_outbox_rows(db_engine, 1, status="dead", older_than_now_by=8 * DAY)
    pending = await add_outbox_rows(db_engine, 1, status="pending", older_than_now_by=90 * DAY)
    # Test mode's recorded emails: as long as sent outbox rows.
    recorded = await recorded_test_emails(client, parties, 2)
    await age(db_engine, "test_emails", "created_at", recorded[0], 7 * DAY + HOUR)
    await age(db_engine, "test_emails", "created_at", recorded[1], 6 * DAY)
    # Idempotency keys: one just past 24 hours, one just inside.
    await age(db_engine, "idempotency_keys", "created_at", "key-old", 25 * HOUR)
    await age(db_engine, "idempotency_keys", "created_at", "key-new", 23 * HOUR)

    deleted = await purge_for(app, settings).purge()

    assert deleted == {
        "webhook delivery attempts": 1,
        "events": 1,
        "sent outbox messages": 1,
        "dead outbox messages": 1,
        "recorded test emails": 1,
        "idempotency keys": 1,
    }
    assert await ids(db_engine, "SELECT id FROM test_emails") == {recorded[1]}
    # The feed starts at the kept event; the old one's id is no longer a place to resume from.
    feed = (await client.get("/events", headers=parties.seller_headers)).json()["items"]
    assert [item["id"] for item in feed] == [new_event]
    gone = await client.get("/events", params={"after": old_event}, headers=parties.seller_headers)
    assert gone.status_code == 422
    assert gone.json()["code"] == "unknown_event"
    # The delivery log keeps the attempt inside its window; the old event's went with it.
    log = await client.get(
        f"/seller/webhooks/{endpoint['id']}/deliveries", headers=parties.seller_headers
    )
    assert {item["id"] for item in log.json()["items"]} == attempts["inside"]
    assert await outbox_ids(db_engine) == {*sent_inside, *dead_inside, *pending}
    assert not {*sent_past, *dead_past} & await outbox_ids(db_engine)
    # A retry inside the window replays the first answer; after it, it creates a new shipment.
    replayed = await create_with_key(client, parties, "key-new", "order-new")
    assert replayed.status_code == 201
    assert replayed.headers.get("idempotent-replayed") == "true"
    assert replayed.json()["id"] == new.json()["id"]
    late = await create_with_key(client, parties, "key-old", "order-old")
    assert late.status_code == 201
    assert late.headers.get("idempotent-replayed") is None
    assert late.json()["id"] != old.json()["id"]
    # Shipments themselves are kept.
    for shipment in (old.json(), new.json()):
        response = await client.get(f"/shipments/{shipment['id']}", headers=parties.seller_headers)
        assert response.status_code == 200


async def test_the_purge_deletes_in_batches_oldest_first(
    app: FastAPI, settings: Settings, db_engine: AsyncEngine
) -> None:
    old = await add_outbox_rows(db_engine, 10, status="sent", older_than_now_by=8 * DAY)
    new = await add_outbox_rows(db_engine, 3, status="sent", older_than_now_by=DAY)
    purge = purge_for(app, settings, batch_size=4)
    [sent] = [kind for kind in retained_kinds(settings) if kind.name == "sent outbox messages"]
    cutoff = await database_now(db_engine) - sent.age

    oldest_first = await ids(db_engine, "SELECT id FROM outbox_messages ORDER BY sent_at LIMIT 4")
    assert await purge.purge_batch(sent, cutoff) == 4
    assert not oldest_first & await outbox_ids(db_engine)
    assert await count_rows(db_engine, "outbox_messages") == 9

    deleted = await purge.purge()

    # Two batches of 4 would leave 2 of the 10: the purge goes on until a batch comes up short.
    assert deleted["sent outbox messages"] == 6
    assert await outbox_ids(db_engine) == new
    assert not old & await outbox_ids(db_engine)


@pytest.fixture
async def held_row(db_engine: AsyncEngine) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An old sent row that another transaction holds locked until the event is set."""
    [row] = await add_outbox_rows(db_engine, 1, status="sent", older_than_now_by=8 * DAY)
    locked, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with db_engine.begin() as connection:
            await connection.execute(
                text("SELECT 1 FROM outbox_messages WHERE id = :id FOR UPDATE"), {"id": row}
            )
            locked.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await locked.wait()
    try:
        yield row, release
    finally:
        release.set()
        await holder


async def test_a_row_another_transaction_holds_is_skipped_not_waited_for(
    app: FastAPI,
    settings: Settings,
    db_engine: AsyncEngine,
    held_row: tuple[str, asyncio.Event],
) -> None:
    row, release = held_row
    others = await add_outbox_rows(db_engine, 5, status="sent", older_than_now_by=8 * DAY)
    purge = purge_for(app, settings, batch_size=2)

    async with asyncio.timeout(5):
        deleted = await purge.purge()

    assert deleted["sent outbox messages"] == len(others)
    assert await outbox_ids(db_engine) == {row}
    release.set()
    await asyncio.sleep(0.1)
    assert (await purge.purge())["sent outbox messages"] == 1
    assert await outbox_ids(db_engine) == set()


async def test_the_worker_purges_periodically_and_stops_when_asked(
    make_worker: WorkerFactory,  # noqa: F811 - the fixture imported above
    db_engine: AsyncEngine,
) -> None:
    old = await add_outbox_rows(db_engine, 3, status="sent", older_than_now_by=8 * DAY)
    new = await add_outbox_rows(db_engine, 2, status="sent", older_than_now_by=DAY)
    worker = make_worker(retention_purge_seconds=0.05)
    running = asyncio.create_task(worker.run())
    try:
        await until_gone(db_engine, old)
        # Rows that age past the window while the worker runs go at its next purge.
        await execute(
            db_engine,
            "UPDATE outbox_messages SET sent_at = sent_at - interval '7 days'",
        )
        await until_gone(db_engine, new)
    finally:
        worker.stop()
        async with asyncio.timeout(5):
            await running
    assert await outbox_ids(db_engine) == set()
