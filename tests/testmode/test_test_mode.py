"""Test mode (product.md §11.2): a seller's test key creates test shipments carried by its
simulated partner, drives them through scenarios on the real status machine, reads the emails
they would have sent, and clears them; live and test data never meet."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.assertions import assert_problem
from tests.conftest import count_rows
from tests.factories import account_with_token, api_key_headers
from tests.outbox.conftest import drain, outbox_rows
from tests.shipments.factories import (
    Parties,
    active_shipments,
    create_shipment,
    make_parties,
    shipment_body,
)
from tests.webhooks.conftest import HookWorkerFactory
from tests.webhooks.receiver import HooksApp, Receiver, register_endpoint, signature_verifies

ALL_SELLER_SCOPES = ["shipments:read", "shipments:write", "webhooks", "events:read"]
FEED_WAIT_SECONDS = 5.0


async def new_key(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    mode: str,
    scopes: list[str] | None = None,
    kind: str = "seller",
) -> dict[str, str]:
    """The bearer header of a new key of `mode` (every seller scope unless `scopes`)."""
    scopes = scopes or ALL_SELLER_SCOPES
    return await api_key_headers(client, headers, kind=kind, mode=mode, scopes=scopes)


async def advance(
    client: httpx.AsyncClient, headers: dict[str, str], shipment_id: str, **body: Any
) -> httpx.Response:
    return await client.post(f"/test/shipments/{shipment_id}/advance", json=body, headers=headers)


async def listed_ids(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[str]:
    response = await client.get("/shipments", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def recorded_emails(client: httpx.AsyncClient, headers: dict[str, str]) -> list[Any]:
    response = await client.get("/test/emails", headers=headers, params={"limit": 100})
    assert response.status_code == 200, response.text
    emails: list[Any] = response.json()["items"]
    return emails


async def feed_types(client: httpx.AsyncClient, headers: dict[str, str], count: int) -> list[str]:
    """The feed's event types once it lists `count` events (or after FEED_WAIT_SECONDS).

    The feed shows an event once every transaction older than it has ended, anywhere on the
    PostgreSQL server (webhooks/service.py): usually at once, but another database's long
    transaction on a shared test server can hold it back for longer than the feed waits.
    """
    deadline = asyncio.get_running_loop().time() + FEED_WAIT_SECONDS
    while True:
        response = await client.get("/events", headers=headers, params={"limit": 100})
        assert response.status_code == 200, response.text
        types = [event["type"] for event in response.json()["items"]]
        if len(types) >= count or asyncio.get_running_loop().time() > deadline:
            return types
        await asyncio.sleep(0.05)


async def messages_about_shipments(db_engine: AsyncEngine) -> list[str]:
    """Kinds of the outbox rows queued about a shipment (emails to recipients, webhooks)."""
    return [row.kind for row in await outbox_rows(db_engine) if row.shipment_id is not None]


async def test_a_test_shipment_touches_no_real_partner_or_recipient(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    test_key = await new_key(client, parties.seller_headers, "test")

    shipment = await create_shipment(client, test_key)
    assert shipment["livemode"] is False
    assert all(event["livemode"] is False for event in shipment["timeline"])
    assert shipment["partner"]["name"] == "Simulated partner"
    assert shipment["partner"]["id"] != parties.partner["id"]
    # The real partner serving the zip got nothing: no slot, no shipment, no customer.
    assert await active_shipments(client, parties.partner_headers) == 0
    assert await listed_ids(client, parties.partner_headers) == []
    # Nothing is queued for the recipient; the email is recorded instead.
    assert await messages_about_shipments(db_engine) == []
    [email] = await recorded_emails(client, test_key)
    assert email["shipment_id"] == shipment["id"]
    assert email["to"] == shipment["recipient"]["email"]
    assert shipment["tracking_number"] in email["subject"] + email["text"]
    assert shipment["tracking_url"] in email["html"]


async def test_a_zip_no_partner_serves_still_takes_test_shipments(
    client: httpx.AsyncClient,
) -> None:
    _, headers = await account_with_token(client, "seller")
    test_key = await new_key(client, headers, "test")
    body = shipment_body(destination={"zip_code": "99999"})
    assert (await client.post("/shipments", json=body, headers=test_key)).status_code == 201
    refused = await client.post("/shipments", json=body, headers=headers)
    assert_problem(refused, 409, "no_partner_available")


async def test_live_and_test_data_never_meet(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    live_key = await new_key(client, parties.seller_headers, "live")
    test_key = await new_key(client, parties.seller_headers, "test")
    live = await create_shipment(client, parties.seller_headers, tags=["gift"])
    test = await create_shipment(client, test_key, tags=["gift"])

    for headers in (parties.seller_headers, live_key):
        assert await listed_ids(client, headers) == [live["id"]]
        assert await listed_ids(client, headers, tag="gift") == [live["id"]]
        assert await listed_ids(client, headers, status="placed") == [live["id"]]
        missing = await client.get(f"/shipments/{test['id']}", headers=headers)
        assert_problem(missing, 404, "shipment_not_found")
        assert await feed_types(client, headers, 1) == ["shipment.created"]
    assert await listed_ids(client, test_key) == [test["id"]]
    assert await listed_ids(client, test_key, tag="gift") == [test["id"]]
    assert_problem(
        await client.get(f"/shipments/{live['id']}", headers=test_key), 404, "shipment_not_found"
    )
    assert await feed_types(client, test_key, 1) == ["shipment.created"]
    # A test key cannot drive a live shipment: to it, that shipment does not exist.
    refused = await advance(client, test_key, live["id"], to="in_transit")
    assert_problem(refused, 404, "shipment_not_found")
    # A real partner's test key sees no test shipment (its own are all live).
    partner_test_key = await new_key(
        client, parties.partner_headers, "test", ["shipments:read"], kind="partner"
    )
    assert await listed_ids(client, partner_test_key) == []
    assert await listed_ids(client, parties.partner_headers) == [live["id"]]


@pytest.mark.parametrize(
    ("scenario", "to", "statuses", "emails"),
    [
        (
            "delivered",
            "delivered",
            ["placed", "in_transit", "out_for_delivery", "delivered"],
            ["shipment_created", "delivery_code", "delivered"],
        ),
        (
            "delivered_second_attempt",
            "delivered",
            [
                "placed",
                "in_transit",
                "out_for_delivery",
                "in_transit",
                "out_for_delivery",
                "delivered",
            ],
            ["shipment_created", "delivery_code", "failed_attempt", "delivery_code", "delivered"],
        ),
        (
            "returned",
            "returned",
            ["placed", "in_transit", "out_for_delivery", "returned"],
            ["shipment_created", "delivery_code", "returned"],
        ),
        ("cancelled", "cancelled", ["placed", "cancelled"], ["shipment_created", "cancelled"]),
    ],
)
async def test_advance_walks_a_scenario_on_the_real_status_machine(
    client: httpx.AsyncClient,
    db_engine: AsyncEngine,
    scenario: str,
    to: str,
    statuses: list[str],
    emails: list[str],
) -> None:
    _, headers = await account_with_token(client, "seller")
    test_key = await new_key(client, headers, "test")
    shipment = await create_shipment(client, test_key)

    response = await advance(client, test_key, shipment["id"], to=to, scenario=scenario)
    assert response.status_code == 200, response.text
    advanced = response.json()
    assert advanced["status"] == to
    assert [event["status"] for event in advanced["timeline"]] == statuses
    assert [event["sequence"] for event in advanced["timeline"]] == list(
        range(1, len(statuses) + 1)
    )
    assert advanced["version"] == len(statuses)
    assert response.headers["etag"] == f'"{advanced["version"]}"'
    stored = (await client.get(f"/shipments/{shipment['id']}", headers=test_key)).json()
    assert stored["timeline"] == advanced["timeline"]
    # Each step is in the feed, as a partner's report would be.
    # One event per step, and shipment.delivered or shipment.cancelled beside the final one.
    final = 1 if to in ("delivered", "cancelled") else 0
    types = await feed_types(client, test_key, len(statuses) + final)
    assert types.count("shipment.updated") == len(statuses) - 1
    assert ("shipment.delivered" in types) is (to == "delivered")
    assert ("shipment.cancelled" in types) is (to == "cancelled")
    recorded = await recorded_emails(client, test_key)
    assert len(recorded) == len(emails)
    assert {email["to"] for email in recorded} == {shipment["recipient"]["email"]}
    for email in recorded:
        assert shipment["tracking_number"] in email["subject"]
        assert shipment["tracking_url"] in email["text"]
        assert f'href="{shipment["tracking_url"]}"' in email["html"]
    async with db_engine.connect() as connection:
        templates = (
            await connection.execute(
                text("SELECT template FROM test_emails ORDER BY created_at, id")
            )
        ).scalars()
        assert sorted(templates) == sorted(emails)
    assert await messages_about_shipments(db_engine) == []


async def test_advancing_in_steps_and_what_the_machine_refuses(
    client: httpx.AsyncClient,
) -> None:
    _, headers = await account_with_token(client, "seller")
    test_key = await new_key(client, headers, "test")
    shipment = await create_shipment(client, test_key)

    moved = await advance(client, test_key, shipment["id"], to="out_for_delivery")
    assert moved.json()["status"] == "out_for_delivery"
    [code_email] = [
        email for email in await recorded_emails(client, test_key) if "code" in email["text"]
    ]
    assert code_email["shipment_id"] == shipment["id"]
    cancelled = await advance(client, test_key, shipment["id"], to="cancelled")
    assert_problem(cancelled, 409, "invalid_transition")
    done = await advance(client, test_key, shipment["id"], to="delivered")
    assert done.json()["status"] == "delivered"
    again = await advance(client, test_key, shipment["id"], to="returned")
    assert_problem(again, 409, "invalid_transition")

    for body in (
        {"to": "placed"},
        {"to": "cancelled", "scenario": "delivered"},
        {"to": "delivered", "scenario": "returned"},
        {"to": "lost"},
        {"to": "delivered", "scenario": "teleported"},
        {"to": "delivered", "verification_code": "000000"},
    ):
        refused = await advance(client, test_key, shipment["id"], **body)
        assert_problem(refused, 422, "validation_failed")
    after = (await client.get(f"/shipments/{shipment['id']}", headers=test_key)).json()
    assert after["version"] == done.json()["version"]


async def test_a_test_shipment_whose_code_expired_at_the_door_is_still_delivered(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    test_key = await new_key(client, headers, "test")
    shipment = await create_shipment(client, test_key)
    await advance(client, test_key, shipment["id"], to="out_for_delivery")
    async with db_engine.begin() as connection:
        await connection.execute(
            text("UPDATE shipments SET delivery_code_expires_at = now() - interval '1 minute'")
        )
    delivered = await advance(client, test_key, shipment["id"], to="delivered")
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["status"] == "delivered"


async def test_test_mode_routes_take_only_a_sellers_test_key(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    live_key = await new_key(client, parties.seller_headers, "live")
    reader = await new_key(client, parties.seller_headers, "test", ["shipments:read"])
    partner_key = await new_key(
        client, parties.partner_headers, "test", ["shipments:write"], kind="partner"
    )
    shipment = await create_shipment(client, parties.seller_headers)

    for headers in (parties.seller_headers, live_key):
        assert_problem(await client.get("/test/emails", headers=headers), 403, "test_key_required")
        assert_problem(await client.delete("/test/data", headers=headers), 403, "test_key_required")
        refused = await advance(client, headers, shipment["id"], to="in_transit")
        assert_problem(refused, 403, "test_key_required")
    assert_problem(await client.delete("/test/data", headers=reader), 403, "insufficient_scope")
    assert_problem(await client.get("/test/emails", headers=partner_key), 403, "wrong_account_kind")
    assert_problem(await client.get("/test/emails"), 401, "not_authenticated")


async def test_test_webhooks_are_signed_marked_and_sent_to_test_endpoints_only(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory
) -> None:
    client = hooks.client
    parties = await make_parties(client)
    test_key = await new_key(client, parties.seller_headers, "test")
    test_endpoint = await register_endpoint(client, test_key, receiver.url("/test-hooks"))
    await register_endpoint(client, parties.seller_headers, receiver.url("/live-hooks"))
    listed = (await client.get("/seller/webhooks", headers=test_key)).json()["items"]
    assert [(item["id"], item["livemode"]) for item in listed] == [(test_endpoint["id"], False)]

    shipment = await create_shipment(client, test_key)
    response = await advance(client, test_key, shipment["id"], to="delivered")
    assert response.status_code == 200, response.text
    await drain(hook_worker())

    assert receiver.received_at("/live-hooks") == []
    received = receiver.received_at("/test-hooks")
    assert [request.json()["type"] for request in received].count("shipment.updated") == 3
    assert {request.json()["type"] for request in received} == {
        "shipment.created",
        "shipment.updated",
        "shipment.delivered",
    }
    for request in received:
        assert signature_verifies(test_endpoint["secret"], request.headers, request.body)
        payload = request.json()
        assert payload["livemode"] is False
        assert payload["data"]["shipment_id"] == shipment["id"]
        assert payload["data"]["timeline_event"]["livemode"] is False
    deliveries = await client.get(
        f"/seller/webhooks/{test_endpoint['id']}/deliveries", headers=test_key
    )
    assert {item["livemode"] for item in deliveries.json()["items"]} == {False}


async def test_clearing_test_data_leaves_live_data_alone(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    test_key = await new_key(client, parties.seller_headers, "test")
    other_seller, other_headers = await account_with_token(client, "seller")
    other_test_key = await new_key(client, other_headers, "test")
    live = await create_shipment(client, parties.seller_headers, tags=["gift"])
    tests = [await create_shipment(client, test_key, tags=["gift"]) for _ in range(2)]
    others = await create_shipment(client, other_test_key)
    await advance(client, test_key, tests[0]["id"], to="delivered")
    await client.post(
        "/seller/webhooks", json={"url": "https://93.184.215.14/test"}, headers=test_key
    )

    cleared = await client.delete("/test/data", headers=test_key)
    assert cleared.status_code == 200, cleared.text
    # Two creates, and one shipment's three steps to delivered (with shipment.delivered); an
    # email for each create, the delivery code and the delivery notice.
    assert cleared.json() == {"shipments": 2, "events": 2 + 4, "webhook_endpoints": 1, "emails": 4}
    assert await listed_ids(client, test_key) == []
    assert await recorded_emails(client, test_key) == []
    assert await feed_types(client, test_key, 0) == []
    assert (await client.get("/seller/webhooks", headers=test_key)).json()["items"] == []
    # Live data, and another seller's test data, are untouched.
    assert await listed_ids(client, parties.seller_headers) == [live["id"]]
    assert await listed_ids(client, parties.seller_headers, tag="gift") == [live["id"]]
    assert await feed_types(client, parties.seller_headers, 1) == ["shipment.created"]
    assert await listed_ids(client, other_test_key) == [others["id"]]
    assert other_seller["id"] != parties.seller["id"]

    again = await client.delete("/test/data", headers=test_key)
    assert again.json() == {"shipments": 0, "events": 0, "webhook_endpoints": 0, "emails": 0}
    # The seller goes on testing after a clear.
    await create_shipment(client, test_key)
    assert await count_rows(db_engine, "shipments") == 3


async def test_idempotency_keys_are_per_mode(client: httpx.AsyncClient) -> None:
    _, headers = await account_with_token(client, "seller")
    test_key = await new_key(client, headers, "test")
    await make_parties(client)  # a live partner for the live create
    body = shipment_body()
    idempotent = {"Idempotency-Key": "order-1042"}

    live = await client.post("/shipments", json=body, headers={**headers, **idempotent})
    test = await client.post("/shipments", json=body, headers={**test_key, **idempotent})
    assert (live.status_code, test.status_code) == (201, 201)
    assert live.json()["id"] != test.json()["id"]
    assert test.json()["livemode"] is False
    replay = await client.post("/shipments", json=body, headers={**test_key, **idempotent})
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == test.json()["id"]


async def test_a_test_shipment_is_tracked_publicly_as_a_test(client: httpx.AsyncClient) -> None:
    _, headers = await account_with_token(client, "seller")
    test_key = await new_key(client, headers, "test")
    shipment = await create_shipment(client, test_key)

    view = await client.get(f"/track/{shipment['tracking_number']}")
    assert view.status_code == 200
    assert view.json()["livemode"] is False
    page = await client.get(f"/t/{shipment['tracking_number']}")
    assert "Test shipment" in page.text


async def test_simulated_partners_cannot_be_logged_into(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    test_key = await new_key(client, headers, "test")
    await create_shipment(client, test_key)
    async with db_engine.connect() as connection:
        email = (
            await connection.execute(text("SELECT email FROM partners WHERE status = 'simulated'"))
        ).scalar_one()
    response = await client.post(
        "/partner/token", data={"username": email, "password": "anything at all"}
    )
    assert response.status_code in (401, 422)
    forgot = await client.post("/partner/password/forgot", json={"email": email})
    assert forgot.status_code in (202, 422)
    recipients = [row.payload.get("to") for row in await outbox_rows(db_engine)]
    assert email not in recipients


async def test_concurrent_test_creates_share_one_simulated_partner(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties: Parties = await make_parties(client)
    test_key = await new_key(client, parties.seller_headers, "test")
    created = await asyncio.gather(*(create_shipment(client, test_key) for _ in range(8)))
    assert len({shipment["partner"]["id"] for shipment in created}) == 1
    async with db_engine.connect() as connection:
        simulated = (
            await connection.execute(
                text("SELECT count(*) FROM partners WHERE status = 'simulated'")
            )
        ).scalar_one()
    assert simulated == 1
    # The real partner serving the zip got none of them.
    assert await active_shipments(client, parties.partner_headers) == 0


async def test_no_idempotency_key_names_a_request_of_the_other_mode(
    client: httpx.AsyncClient,
) -> None:
    """A live key shaped like a stored test key (or the reverse) is just another key."""
    parties = await make_parties(client)
    test_key = await new_key(client, parties.seller_headers, "test")
    body = shipment_body()

    async def create(headers: dict[str, str], key: str) -> httpx.Response:
        response = await client.post(
            "/shipments", json=body, headers={**headers, "Idempotency-Key": key}
        )
        assert response.status_code == 201, response.text
        return response

    live = await create(parties.seller_headers, "test:k1")
    test = await create(test_key, "k1")
    assert "idempotent-replayed" not in test.headers
    assert test.json()["id"] != live.json()["id"]
    assert test.json()["livemode"] is False
    # Clearing test data keeps the live key: the live retry still replays.
    assert (await client.delete("/test/data", headers=test_key)).status_code == 200
    retry = await create(parties.seller_headers, "test:k1")
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["id"] == live.json()["id"]
    assert await listed_ids(client, parties.seller_headers) == [live.json()["id"]]


async def test_a_test_create_that_commits_while_the_data_is_cleared_is_no_500(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    test_key = await new_key(client, headers, "test")
    await create_shipment(client, test_key)
    async with db_engine.connect() as blocker:
        # Holds the clear between its first statements and its delete of the shipments.
        held = await blocker.begin()
        await blocker.execute(text("SELECT id FROM events WHERE NOT livemode FOR UPDATE"))
        clear = asyncio.create_task(client.delete("/test/data", headers=test_key))
        await asyncio.sleep(0.3)
        during = await client.post(
            "/shipments",
            json=shipment_body(),
            headers={**test_key, "Idempotency-Key": "during-clear"},
        )
        assert during.status_code == 201, during.text
        await held.rollback()
        cleared = await clear
    assert cleared.status_code == 200, cleared.text
    # The shipment created meanwhile went with the rest, its idempotency key with it.
    assert await listed_ids(client, test_key) == []
    assert await count_rows(db_engine, "idempotency_keys") == 0
