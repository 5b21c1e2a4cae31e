"""Delivery operations off the happy path, as a review of the change found them broken: an
idempotent replay of a response stored before events had `occurred_at`, a batch sent again
with a delivery code, a correction moving partners while the expiry sweep runs, and a new zip
that keeps the partner."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from backend.db import create_sessionmaker
from backend.main import create_app
from backend.redis_client import create_redis
from backend.shipments.expiry import PlacedExpiry
from tests.conftest import make_settings, running_client
from tests.factories import account_with_token
from tests.shipments.factories import (
    bring_to,
    delivery_code,
    make_parties,
    patch_shipment,
    shipment_body,
)

# The fields this change added to a timeline event and to a shipment: the response bodies
# stored for idempotency keys by the release before it have none of them.
NEW_EVENT_FIELDS = ("occurred_at", "location", "failure_reason", "note")


async def test_replaying_an_idempotency_key_stored_before_this_release_is_not_a_500(
    app: FastAPI, db_engine: AsyncEngine
) -> None:
    """A client retries a create (the same Idempotency-Key and body) whose first answer was
    stored by the previous release (rolling deploy, or up to 24 h of retention after it)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        parties = await make_parties(client)
        headers = {**parties.seller_headers, "Idempotency-Key": str(uuid.uuid4())}
        body = shipment_body()
        first = await client.post("/shipments", json=body, headers=headers)
        assert first.status_code == 201, first.text

        # The record as the previous release wrote it: its ShipmentRead had no `attempts`, and
        # its timeline events no occurred_at, location, failure_reason or note.
        old_body: dict[str, Any] = first.json()
        old_body.pop("attempts")
        for event in old_body["timeline"]:
            for field in NEW_EVENT_FIELDS:
                event.pop(field)
        async with db_engine.begin() as connection:
            await connection.execute(
                text("UPDATE idempotency_keys SET response_body = CAST(:body AS jsonb)"),
                {"body": httpx.Response(200, json=old_body).text},
            )

        replay = await client.post("/shipments", json=body, headers=headers)

    assert replay.status_code == 201, replay.text
    assert replay.json()["id"] == first.json()["id"]


GUESS_BUDGET = 3


@pytest.fixture
async def guess_client(database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        database_url, redis_url, delivery_code_guesses_per_partner_per_minute=GUESS_BUDGET
    )
    async with running_client(create_app(settings)) as http:
        yield http


async def test_a_retried_batch_with_a_delivery_does_not_spend_the_partners_guesses(
    guess_client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """A van resends a batch whose answer was lost: its delivered scan is a duplicate, which
    records nothing, so it must not count as a delivery-code guess either; otherwise a few
    resends would leave the partner unable to deliver anything for a minute (429)."""
    client = guess_client
    parties = await make_parties(client)
    first = (
        await client.post("/shipments", json=shipment_body(), headers=parties.seller_headers)
    ).json()
    second = (
        await client.post("/shipments", json=shipment_body(), headers=parties.seller_headers)
    ).json()
    for shipment in (first, second):
        await bring_to(client, db_engine, parties, shipment["id"], "out_for_delivery")

    batch = {
        "scans": [
            {
                "scan_id": "van-7-000001",
                "tracking_number": first["tracking_number"],
                "status": "delivered",
                "verification_code": await delivery_code(db_engine, first["id"]),
            }
        ]
    }
    accepted = await client.post("/scans", json=batch, headers=parties.partner_headers)
    assert [r["result"] for r in accepted.json()["results"]] == ["accepted"]
    for _ in range(GUESS_BUDGET):
        again = await client.post("/scans", json=batch, headers=parties.partner_headers)
        assert [r["result"] for r in again.json()["results"]] == ["duplicate"]

    # The partner's first delivery code guess of the minute on another shipment, and right.
    response = await patch_shipment(
        client,
        parties.partner_headers,
        second["id"],
        status="delivered",
        verification_code=await delivery_code(db_engine, second["id"]),
    )
    assert response.status_code == 200, response.text


# --- a correction's two partner rows against the expiry sweep's ------------------------------


async def _waiting_on_locks(db_engine: AsyncEngine) -> int:
    async with db_engine.connect() as connection:
        return int(
            (
                await connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            ).scalar_one()
        )


async def _until_waiting(db_engine: AsyncEngine, count: int) -> None:
    async with asyncio.timeout(10):
        while await _waiting_on_locks(db_engine) < count:  # noqa: ASYNC110 - polling PostgreSQL
            await asyncio.sleep(0.02)


async def test_a_correction_moving_partners_does_not_deadlock_with_the_expiry_sweep(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    """A correction moving a shipment from a lower partner to a higher one (by id) updates the
    lower row first, then the higher (assignment.py move_slot). The expiry sweep frees its
    batch's slots in partner-id order too; in the batch's own order (oldest first) it could
    hold the higher row while waiting for the lower: a lock cycle, which PostgreSQL breaks by
    failing one of the two transactions.

    A third transaction holds the lower row for a moment only to pin the interleaving: the
    correction queues for it first, the sweep (already holding the higher row) second."""
    mover = await make_parties(client)
    _, expiring_headers = await account_with_token(client, "seller")
    _, x_headers = await account_with_token(
        client, "partner", serviceable_zip_codes=["10001"], max_handling_capacity=5
    )
    _, y_headers = await account_with_token(
        client, "partner", serviceable_zip_codes=["20002"], max_handling_capacity=5
    )
    x_id = uuid.UUID((await client.get("/partner/me", headers=x_headers)).json()["id"])
    y_id = uuid.UUID((await client.get("/partner/me", headers=y_headers)).json()["id"])
    zips = {x_id: "10001", y_id: "20002"}
    low, high = sorted((x_id, y_id))

    async def create_to(headers: dict[str, str], partner_id: uuid.UUID) -> dict[str, Any]:
        destination = {"zip_code": zips[partner_id], "city": "Somewhere"}
        response = await client.post(
            "/shipments", json=shipment_body(destination=destination), headers=headers
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        assert created["partner"]["id"] == str(partner_id)
        return created

    # Oldest first: the sweep frees the high partner's slot, then the low one's.
    expired_high = await create_to(expiring_headers, high)
    expired_low = await create_to(expiring_headers, low)
    moving = await create_to(mover.seller_headers, low)
    async with db_engine.begin() as connection:
        for shipment, hours in ((expired_high, 80), (expired_low, 79)):
            await connection.execute(
                text(
                    "UPDATE shipments SET created_at = created_at - make_interval(hours => :h)"
                    " WHERE id = :id"
                ),
                {"h": hours, "id": uuid.UUID(shipment["id"])},
            )

    redis = create_redis(settings, settings.redis_url or "", max_connections=4)
    expiry = PlacedExpiry(settings, create_sessionmaker(db_engine), redis)
    gate = await db_engine.connect()
    try:
        transaction = await gate.begin()
        await gate.execute(text("SELECT 1 FROM partners WHERE id = :id FOR UPDATE"), {"id": low})
        correction = asyncio.create_task(
            client.patch(
                f"/shipments/{moving['id']}/delivery-details",
                json={"destination": {"zip_code": zips[high]}},
                headers=mover.seller_headers,
            )
        )
        await _until_waiting(db_engine, 1)  # the correction waits to free the low row
        sweep = asyncio.create_task(expiry.sweep_batch())
        await _until_waiting(db_engine, 2)  # the sweep holds the high row, waits for the low
        await transaction.commit()
        async with asyncio.timeout(20):
            results = await asyncio.gather(correction, sweep, return_exceptions=True)
    finally:
        await gate.close()
        await redis.aclose()

    response, swept = results
    assert isinstance(response, httpx.Response), repr(response)
    assert response.status_code == 200, response.text
    assert swept == 2, repr(swept)


async def test_a_new_zip_the_partner_serves_does_not_announce_a_partner_change(
    client: httpx.AsyncClient,
) -> None:
    """ShipmentChanges (webhooks/schemas.py): a correction carries `partner` only "when the new
    zip code moved the shipment to another", and a field an event left alone is absent."""
    parties = await make_parties(client, serviceable_zip_codes=["02139", "02140"])
    created = await client.post("/shipments", json=shipment_body(), headers=parties.seller_headers)
    shipment = created.json()

    response = await client.patch(
        f"/shipments/{shipment['id']}/delivery-details",
        json={"destination": {"zip_code": "02140"}},
        headers=parties.seller_headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["partner"] == shipment["partner"]

    feed = await client.get("/events", headers=parties.seller_headers, params={"limit": 100})
    corrections = [
        item["data"]["changes"]
        for item in feed.json()["items"]
        if item["shipment_id"] == shipment["id"] and item["data"]["version"] == 2
    ]
    assert corrections == [{"destination": corrections[0]["destination"]}]
