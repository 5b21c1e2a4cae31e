"""GET /events, the seller's event feed: order, paging with `after` and `limit`, isolation
between sellers, the same ids as the webhook deliveries, and commit order under concurrency."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.context import app_context
from backend.db import unit_of_work
from backend.webhooks.events import EventPublisher
from backend.webhooks.schemas import ShipmentEventData
from backend.worker import OutboxWorker
from tests.assertions import assert_problem
from tests.factories import account_with_token
from tests.outbox.conftest import WorkerSettingsFactory, drain
from tests.shipments.factories import (
    Parties,
    create_shipment,
    make_parties,
    patch_shipment,
    shipment_body,
)
from tests.webhooks.receiver import (
    HooksApp,
    Receiver,
    register_endpoint,
)


async def feed_page(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> dict[str, Any]:
    response = await client.get("/events", params=params, headers=headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def whole_feed(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every event, read page by page with `after` (asserting the pages end)."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    for _ in range(100):
        page = await feed_page(client, headers, **params)
        items.extend(page["items"])
        if not page["has_more"]:
            return items
        params["after"] = items[-1]["id"]
    raise AssertionError("the feed never ended")


async def positions(engine: AsyncEngine, event_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Where each event stands in the feed's order: its transaction, then its position."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT id, transaction_id, position FROM events WHERE id = ANY(:ids)"),
                {"ids": [uuid.UUID(event_id) for event_id in event_ids]},
            )
        ).all()
    return {str(row.id): (int(row.transaction_id), int(row.position)) for row in rows}


async def five_events(client: httpx.AsyncClient, parties: Parties) -> list[str]:
    """created x2, updated, then updated + cancelled: five events of the parties' seller."""
    first = await create_shipment(client, parties.seller_headers)
    second = await create_shipment(client, parties.seller_headers)
    moved = await patch_shipment(client, parties.partner_headers, first["id"], status="in_transit")
    assert moved.status_code == 200, moved.text
    cancelled = await client.post(
        f"/shipments/{second['id']}/cancel", headers=parties.seller_headers
    )
    assert cancelled.status_code == 200, cancelled.text
    return [first["id"], second["id"]]


async def test_the_feed_lists_events_oldest_first_with_the_webhook_ids(
    hooks: HooksApp,
    receiver: Receiver,
    worker_settings: WorkerSettingsFactory,
    db_engine: AsyncEngine,
) -> None:
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url())
    first_id, second_id = await five_events(hooks.client, parties)
    worker = OutboxWorker(worker_settings(webhooks_allow_private=True), hooks.sessionmaker)
    try:
        await drain(worker)
    finally:
        await worker.aclose()

    page = await feed_page(hooks.client, parties.seller_headers)

    assert page["has_more"] is False
    items = page["items"]
    assert [(item["type"], item["shipment_id"]) for item in items] == [
        ("shipment.created", first_id),
        ("shipment.created", second_id),
        ("shipment.updated", first_id),
        ("shipment.updated", second_id),
        ("shipment.cancelled", second_id),
    ]
    assert [item["data"]["shipment_id"] for item in items] == [
        first_id,
        second_id,
        first_id,
        second_id,
        second_id,
    ]
    assert [item["data"]["status"] for item in items] == [
        "placed",
        "placed",
        "in_transit",
        "cancelled",
        "cancelled",
    ]
    # Each event carries what it changed, not the whole shipment.
    assert [item["data"]["changes"].get("status") for item in items] == [
        "placed",
        "placed",
        "in_transit",
        "cancelled",
        "cancelled",
    ]
    assert [item["data"]["version"] for item in items] == [1, 1, 2, 2, 2]
    for item in items:
        # The documented shape (the OpenAPI webhooks section), and nothing more.
        ShipmentEventData.model_validate(item["data"])
    assert [item["created_at"] for item in items] == sorted(item["created_at"] for item in items)
    # The ids are the webhook-ids of the deliveries, and each delivery's body is the event.
    by_webhook_id = {request.headers["webhook-id"]: request.json() for request in receiver.requests}
    assert len(receiver.requests) == 5
    assert set(by_webhook_id) == {item["id"] for item in items}
    for item in items:
        delivered = by_webhook_id[item["id"]]
        assert delivered["type"] == item["type"]
        assert delivered["data"] == item["data"]
    log = await hooks.client.get(
        f"/seller/webhooks/{endpoint['id']}/deliveries", headers=parties.seller_headers
    )
    assert {attempt["event_id"] for attempt in log.json()["items"]} == {
        item["id"] for item in items
    }


async def test_after_returns_only_later_events(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    await five_events(client, parties)
    everything = (await feed_page(client, parties.seller_headers))["items"]
    assert len(everything) == 5

    later = await feed_page(client, parties.seller_headers, after=everything[1]["id"])

    assert [item["id"] for item in later["items"]] == [item["id"] for item in everything[2:]]
    assert later["has_more"] is False
    last = await feed_page(client, parties.seller_headers, after=everything[-1]["id"])
    assert last == {"items": [], "has_more": False}

    # An event that happens after a reader caught up is what the next read with `after` finds.
    newest = await create_shipment(client, parties.seller_headers)
    caught_up = await feed_page(client, parties.seller_headers, after=everything[-1]["id"])
    [item] = caught_up["items"]
    assert item["type"] == "shipment.created"
    assert item["shipment_id"] == newest["id"]


async def test_limit_and_has_more_page_through_every_event_exactly_once(
    client: httpx.AsyncClient,
) -> None:
    parties = await make_parties(client)
    await five_events(client, parties)
    everything = [item["id"] for item in (await feed_page(client, parties.seller_headers))["items"]]

    pages: list[list[str]] = []
    more: list[bool] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = await feed_page(client, parties.seller_headers, **params)
        pages.append([item["id"] for item in page["items"]])
        more.append(page["has_more"])
        if not page["has_more"]:
            break
        params["after"] = page["items"][-1]["id"]
        assert len(pages) < 10

    assert [len(ids) for ids in pages] == [2, 2, 1]
    assert more == [True, True, False]
    assert [event_id for ids in pages for event_id in ids] == everything
    assert len(set(everything)) == 5


@pytest.mark.parametrize("limit", [0, -1, 101, "many"])
async def test_a_limit_out_of_range_is_refused(client: httpx.AsyncClient, limit: object) -> None:
    _, headers = await account_with_token(client, "seller")

    response = await client.get("/events", params={"limit": str(limit)}, headers=headers)

    assert_problem(response, 422, "validation_failed")


async def test_sellers_see_only_their_own_events(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    await five_events(client, parties)
    _, other_headers = await account_with_token(client, "seller")
    theirs = (await feed_page(client, parties.seller_headers))["items"]

    assert await feed_page(client, other_headers) == {"items": [], "has_more": False}

    # Another seller's event id, or an id of nothing at all, is not a place to resume from.
    for after in (theirs[0]["id"], str(uuid.uuid4())):
        response = await client.get("/events", params={"after": after}, headers=other_headers)
        assert_problem(response, 422, "unknown_event")
    # The other seller's own events stay out of the owner's feed.
    mine = await create_shipment(client, other_headers)
    [own] = (await feed_page(client, other_headers))["items"]
    assert own["shipment_id"] == mine["id"]
    assert [item["id"] for item in (await feed_page(client, parties.seller_headers))["items"]] == [
        item["id"] for item in theirs
    ]


async def test_partner_tokens_are_refused(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    await create_shipment(client, parties.seller_headers)

    response = await client.get("/events", headers=parties.partner_headers)

    assert_problem(response, 403, "wrong_account_kind")


async def test_anonymous_readers_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/events")

    assert_problem(response, 401, "not_authenticated")


async def until_blocked_or_done(engine: AsyncEngine, task: asyncio.Task[Any]) -> None:
    """Wait until `task` is done or some session of this database waits for a lock."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with asyncio.timeout(10):
        while not task.done():
            async with engine.connect() as connection:
                if (await connection.execute(query)).scalar_one():
                    return
            await asyncio.sleep(0.01)


async def test_a_change_committing_after_a_slower_one_comes_after_it_in_the_feed(
    app: FastAPI, client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """A transaction that recorded an event but has not committed yet holds back later events
    of the same seller: a reader that catches up in between must not skip the slow one. (The
    later change no longer waits for the slow one: nothing is locked; the feed holds its event
    back until the slow transaction has ended.)"""
    parties = await make_parties(client)
    reported = await create_shipment(client, parties.seller_headers)
    other = await create_shipment(client, parties.seller_headers)
    seen = (await feed_page(client, parties.seller_headers))["items"]
    assert len(seen) == 2
    async with unit_of_work(app_context(app).sessionmaker) as slow_transaction:
        # What every change of a shipment does last, for another shipment of the same seller.
        [slow] = await EventPublisher(slow_transaction.session).publish(
            uuid.UUID(parties.seller["id"]),
            ["shipment.updated"],
            {"shipment_id": other["id"], "timeline_event": {"note": "slow"}},
            shipment_id=uuid.UUID(other["id"]),
        )
        await slow_transaction.session.flush()  # written, so the transaction has its id
        patch = asyncio.create_task(
            patch_shipment(client, parties.partner_headers, reported["id"], status="in_transit")
        )
        await until_blocked_or_done(db_engine, patch)
        assert patch.done()  # the later change did not wait for the slow one
        # A reader catching up while the slow transaction is still open; it commits next.
        seen += (await feed_page(client, parties.seller_headers, after=seen[-1]["id"]))["items"]
    response = await patch
    assert response.status_code == 200, response.text
    seen += (await feed_page(client, parties.seller_headers, after=seen[-1]["id"]))["items"]

    final = await whole_feed(client, parties.seller_headers)
    assert len(final) == 4
    assert [item["id"] for item in seen] == [item["id"] for item in final]
    assert final[2]["id"] == str(slow)
    assert (final[3]["shipment_id"], final[3]["type"]) == (reported["id"], "shipment.updated")


PARTNERS = 5
UPDATES_PER_SHIPMENT = 4


async def test_concurrent_updates_by_several_partners_keep_the_feed_in_commit_order(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Partners report on one seller's shipments at once while a reader keeps catching up with
    `after`. Positions follow commit order, so the reader never skips an event that committed
    after it had moved past a later one: what it collected equals the final feed."""
    _, seller_headers = await account_with_token(client, "seller")
    shipments: list[tuple[str, dict[str, str]]] = []
    for number in range(PARTNERS):
        zip_code = f"0310{number}"
        _, partner_headers = await account_with_token(
            client, "partner", serviceable_zip_codes=[zip_code], max_handling_capacity=5
        )
        body = shipment_body(destination={"zip_code": zip_code, "city": "Concord"})
        response = await client.post("/shipments", json=body, headers=seller_headers)
        assert response.status_code == 201, response.text
        shipments.append((response.json()["id"], partner_headers))
    created = await feed_page(client, seller_headers, limit=100)
    assert len(created["items"]) == PARTNERS

    collected: list[dict[str, Any]] = list(created["items"])
    reporting = True

    async def report(shipment_id: str, partner_headers: dict[str, str]) -> None:
        for update in range(UPDATES_PER_SHIPMENT):
            response = await patch_shipment(
                client, partner_headers, shipment_id, note=f"scan {update}", location_zip="03301"
            )
            assert response.status_code == 200, response.text

    async def read_along() -> None:
        while True:
            finished = not reporting
            page = await feed_page(client, seller_headers, after=collected[-1]["id"], limit=100)
            collected.extend(page["items"])
            if finished and not page["has_more"]:
                return
            await asyncio.sleep(0)

    reader = asyncio.create_task(read_along())
    try:
        await asyncio.gather(*(report(shipment_id, headers) for shipment_id, headers in shipments))
    finally:
        reporting = False
    async with asyncio.timeout(10):
        await reader

    final = await whole_feed(client, seller_headers)
    total = PARTNERS * (1 + UPDATES_PER_SHIPMENT)
    assert len(final) == total
    assert len({item["id"] for item in final}) == total
    assert [item["id"] for item in collected] == [item["id"] for item in final]
    assert {item["type"] for item in final[PARTNERS:]} == {"shipment.updated"}
    # The stored order (transaction, then position) strictly increases along the feed.
    stored = await positions(db_engine, [item["id"] for item in final])
    ordered = [stored[item["id"]] for item in final]
    assert ordered == sorted(ordered)
    assert len(set(ordered)) == total
    # Each shipment's timeline appears in its own order.
    for shipment_id, _ in shipments:
        sequences = [
            item["data"]["timeline_event"]["sequence"]
            for item in final
            if item["shipment_id"] == shipment_id
        ]
        assert sequences == list(range(1, UPDATES_PER_SHIPMENT + 2))
    assert {item["data"]["shipment_id"] for item in final} == {
        shipment_id for shipment_id, _ in shipments
    }
    # A scan changes no field: it is all in the timeline event.
    assert {json.dumps(item["data"]["changes"]) for item in final[PARTNERS:]} == {"{}"}
