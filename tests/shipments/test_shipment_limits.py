"""Limits whose effects the worker carries out: recipient emails past a seller's hourly budget
are deferred (never dropped), and shipments left `placed` too long are cancelled by the sweep
exactly as a seller's cancel would (timeline, feed, webhooks, freed slot)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from backend.db import create_sessionmaker
from backend.main import create_app
from backend.outbox.models import OutboxStatus
from backend.redis_client import create_redis
from backend.shipments.expiry import PlacedExpiry, expiry_note
from tests.assertions import assert_problem
from tests.conftest import make_settings, running_client
from tests.factories import api_key_headers
from tests.outbox.conftest import (
    SmtpServer,
    WorkerFactory,
    database_now,
    drain,
    outbox_rows,
)
from tests.shipments.factories import (
    active_shipments,
    create_shipment,
    make_parties,
    shipment_body,
)
from tests.shipments.test_concurrency import stored_active_shipments, stored_events
from tests.webhooks.receiver import HooksApp, register_endpoint

EMAILS_PER_HOUR = 2


@pytest.fixture
async def small_budget(database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        database_url, redis_url, recipient_emails_per_seller_per_hour=EMAILS_PER_HOUR
    )
    async with running_client(create_app(settings)) as http:
        yield http


async def created_emails(db_engine: AsyncEngine, shipment: dict[str, Any]) -> list[Any]:
    return [
        row
        for row in await outbox_rows(db_engine, shipment["id"])
        if row.payload.get("template") == "shipment_created"
    ]


async def test_recipient_emails_past_the_hourly_budget_are_deferred_not_dropped(
    small_budget: httpx.AsyncClient,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    client = small_budget
    parties = await make_parties(client)
    # A refused create gives its slot back: it sent nothing.
    unserved = await client.post(
        "/shipments",
        json=shipment_body(destination={"zip_code": "99999"}),
        headers=parties.seller_headers,
    )
    assert_problem(unserved, 409, "no_partner_available")
    shipments = [await create_shipment(client, parties.seller_headers) for _ in range(4)]
    now = await database_now(db_engine)

    rows = [(await created_emails(db_engine, shipment))[0] for shipment in shipments]

    # Every shipment was created and has its email; the first two are due now...
    assert all(row.status == OutboxStatus.pending for row in rows)
    assert all(row.next_attempt_at <= now for row in rows[:2])
    # ...the rest wait for the next hour, one after the other within it.
    next_hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    assert next_hour <= rows[2].next_attempt_at < rows[3].next_attempt_at
    assert rows[3].next_attempt_at < next_hour + timedelta(hours=1)

    await drain(make_worker())
    sent_to = {address for mail in smtp_server.received for address in mail.rcpt_tos}
    recipients = [shipment["recipient"]["email"] for shipment in shipments]
    assert sent_to & set(recipients) == set(recipients[:2])
    for shipment in shipments[2:]:
        [row] = await created_emails(db_engine, shipment)
        assert row.status == OutboxStatus.pending
        assert row.attempts == 0

    # Another seller's budget is its own.
    other = await make_parties(client, serviceable_zip_codes=["10001"])
    theirs = await create_shipment(client, other.seller_headers, destination={"zip_code": "10001"})
    [row] = await created_emails(db_engine, theirs)
    assert row.next_attempt_at <= await database_now(db_engine)


# --- expiry of placed shipments ---------------------------------------------------------------


async def age_shipment(db_engine: AsyncEngine, shipment_id: str, hours: float) -> None:
    """Move the shipment's creation back by `hours`, as if it had been waiting that long."""
    async with db_engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE shipments SET created_at = created_at - make_interval(secs => :seconds)"
                " WHERE id = :id"
            ),
            {"id": uuid.UUID(shipment_id), "seconds": hours * 3600},
        )


async def feed_types(db_engine: AsyncEngine, shipment_id: str) -> list[str]:
    async with db_engine.connect() as connection:
        result = await connection.execute(
            text("SELECT type FROM events WHERE shipment_id = :id ORDER BY position"),
            {"id": uuid.UUID(shipment_id)},
        )
        return [row.type for row in result]


async def webhook_rows(db_engine: AsyncEngine, shipment_id: str) -> int:
    return len([row for row in await outbox_rows(db_engine, shipment_id) if row.kind == "webhook"])


@pytest.fixture
async def expiry(settings: Settings, db_engine: AsyncEngine) -> AsyncIterator[PlacedExpiry]:
    assert settings.redis_url is not None
    redis: Redis = create_redis(settings, settings.redis_url, max_connections=4)
    try:
        yield PlacedExpiry(settings, create_sessionmaker(db_engine), redis)
    finally:
        await redis.aclose()


async def test_the_sweep_cancels_expired_shipments_as_a_seller_cancel_would(
    hooks: HooksApp, db_engine: AsyncEngine, expiry: PlacedExpiry
) -> None:
    client = hooks.client
    parties = await make_parties(client, max_handling_capacity=3)
    await register_endpoint(client, parties.seller_headers, "http://127.0.0.1:9/hooks")
    by_seller, expired, young = [
        await create_shipment(client, parties.seller_headers) for _ in range(3)
    ]
    cancelled = await client.post(
        f"/shipments/{by_seller['id']}/cancel", headers=parties.seller_headers
    )
    assert cancelled.status_code == 200, cancelled.text
    await age_shipment(db_engine, expired["id"], 72.1)
    await age_shipment(db_engine, young["id"], 71.9)

    assert await expiry.sweep() == 1

    view = (await client.get(f"/shipments/{expired['id']}", headers=parties.seller_headers)).json()
    assert view["status"] == "cancelled"
    assert view["timeline"][-1]["status"] == "cancelled"
    assert view["timeline"][-1]["description"] == expiry_note(72)
    assert [s for _, s, _ in await stored_events(db_engine, expired["id"])] == [
        "placed",
        "cancelled",
    ]
    # The same feed events and webhook deliveries as the seller's own cancel.
    assert await feed_types(db_engine, expired["id"]) == await feed_types(
        db_engine, by_seller["id"]
    )
    assert await feed_types(db_engine, expired["id"]) == [
        "shipment.created",
        "shipment.updated",
        "shipment.cancelled",
    ]
    assert await webhook_rows(db_engine, expired["id"]) == 3
    assert await webhook_rows(db_engine, by_seller["id"]) == 3
    # Its slot is free; the younger shipment is untouched.
    assert await active_shipments(client, parties.partner_headers) == 1
    young_view = await client.get(f"/shipments/{young['id']}", headers=parties.seller_headers)
    assert young_view.json()["status"] == "placed"
    assert await expiry.sweep() == 0


async def test_test_shipments_expire_by_the_same_rule_beside_live_ones(
    client: httpx.AsyncClient, db_engine: AsyncEngine, expiry: PlacedExpiry
) -> None:
    parties = await make_parties(client)
    test_key = await api_key_headers(client, parties.seller_headers, mode="test")
    live = await create_shipment(client, parties.seller_headers)
    test = await create_shipment(client, test_key)
    for shipment in (live, test):
        await age_shipment(db_engine, shipment["id"], 72.1)

    assert await expiry.sweep() == 2

    for shipment, headers in ((live, parties.seller_headers), (test, test_key)):
        view = (await client.get(f"/shipments/{shipment['id']}", headers=headers)).json()
        assert view["status"] == "cancelled"
        assert view["timeline"][-1]["livemode"] is view["livemode"]
    # Only the live shipment held a slot of the real partner.
    assert await active_shipments(client, parties.partner_headers) == 0


async def test_simultaneous_sweeps_cancel_each_shipment_once(
    client: httpx.AsyncClient, db_engine: AsyncEngine, expiry: PlacedExpiry, settings: Settings
) -> None:
    parties = await make_parties(client, max_handling_capacity=50)
    shipments = [await create_shipment(client, parties.seller_headers) for _ in range(15)]
    for shipment in shipments:
        await age_shipment(db_engine, shipment["id"], 100)
    assert settings.redis_url is not None
    redis: Redis = create_redis(settings, settings.redis_url, max_connections=4)
    try:
        sweeps = [
            expiry,
            *(PlacedExpiry(settings, create_sessionmaker(db_engine), redis) for _ in range(2)),
        ]
        counts = await asyncio.gather(*(sweep.sweep() for sweep in sweeps))
    finally:
        await redis.aclose()

    assert sum(counts) == 15
    for shipment in shipments:
        statuses = [s for _, s, _ in await stored_events(db_engine, shipment["id"])]
        assert statuses == ["placed", "cancelled"]
        assert await feed_types(db_engine, shipment["id"]) == [
            "shipment.created",
            "shipment.updated",
            "shipment.cancelled",
        ]
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 0


async def test_the_worker_process_runs_the_sweep(
    client: httpx.AsyncClient, db_engine: AsyncEngine, make_worker: WorkerFactory
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    await age_shipment(db_engine, shipment["id"], 73)
    worker = make_worker(placed_expiry_sweep_seconds=0.05)
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):  # a hang guard, not a timing check
            while True:
                if await stored_active_shipments(db_engine, parties.partner["id"]) == 0:
                    break
                await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await running

    view = await client.get(f"/shipments/{shipment['id']}", headers=parties.seller_headers)
    assert view.json()["status"] == "cancelled"
