"""Webhooks against real PostgreSQL, Redis and a real HTTP receiver: registration and the URL
guard, Standard Webhooks signatures (verified with the reference library, `standardwebhooks`,
for every request the receiver takes: see receiver.py), the event types,
at-least-once retries and the delivery log, disabling an endpoint that keeps failing, test
events, and the OpenAPI `webhooks` section."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook

from backend.config import Settings
from backend.webhooks.schemas import ShipmentEventData
from tests.assertions import assert_problem
from tests.conftest import count_rows
from tests.factories import account_with_token
from tests.outbox.conftest import (
    database_now,
    drain,
    make_retries_due,
    outbox_rows,
)
from tests.shipments.factories import (
    create_shipment,
    delivery_code,
    make_parties,
    patch_shipment,
)
from tests.webhooks.conftest import HookWorkerFactory
from tests.webhooks.receiver import (
    HooksApp,
    ReceivedRequest,
    Receiver,
    register_endpoint,
    running_receiver,
    signature_verifies,
)

# A literal public address: accepted without DNS (this sandbox resolves no public names).
PUBLIC_URL = "https://93.184.215.14/hooks/shiptrack"


# --- helpers --------------------------------------------------------------------------------


async def seller_events(engine: AsyncEngine, seller_id: str) -> list[tuple[str, str]]:
    """(id, type) of the seller's stored events, in feed order."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT id, type FROM events WHERE seller_id = :seller ORDER BY position"),
                {"seller": uuid.UUID(seller_id)},
            )
        ).all()
    return [(str(row.id), str(row.type)) for row in rows]


async def list_endpoints(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> list[dict[str, Any]]:
    response = await client.get("/seller/webhooks", headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def deliveries(
    client: httpx.AsyncClient, headers: dict[str, str], endpoint_id: str
) -> list[dict[str, Any]]:
    response = await client.get(f"/seller/webhooks/{endpoint_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def webhook_rows_for(engine: AsyncEngine, endpoint_id: str) -> list[dict[str, Any]]:
    return [
        row.payload
        for row in await outbox_rows(engine)
        if row.kind == "webhook" and row.payload["endpoint_id"] == endpoint_id
    ]


async def set_failing_since(engine: AsyncEngine, endpoint_id: str, ago: timedelta) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE webhook_endpoints"
                " SET failing_since = now() - make_interval(secs => :seconds) WHERE id = :id"
            ),
            {"seconds": ago.total_seconds(), "id": uuid.UUID(endpoint_id)},
        )


def types_of(requests: list[ReceivedRequest]) -> list[str]:
    return sorted(str(request.json()["type"]) for request in requests)


# --- registration ----------------------------------------------------------------------------


async def test_registration_returns_a_whsec_secret_that_is_never_shown_again(
    hooks: HooksApp, receiver: Receiver
) -> None:
    _, headers = await account_with_token(hooks.client, "seller")

    created = await register_endpoint(
        hooks.client, headers, receiver.url(), description="Order system"
    )

    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24
    assert created["url"] == receiver.url()
    assert created["description"] == "Order system"
    assert created["enabled"] is True
    assert created["disabled_reason"] is None
    assert created["failing_since"] is None
    response = await hooks.client.get("/seller/webhooks", headers=headers)
    assert response.status_code == 200
    assert secret not in response.text
    assert secret.removeprefix("whsec_") not in response.text
    [listed] = response.json()["items"]
    assert "secret" not in listed
    assert listed == {key: value for key, value in created.items() if key != "secret"}
    # Each endpoint gets a secret of its own.
    other = await register_endpoint(hooks.client, headers, receiver.url("/other"))
    assert other["secret"] != secret


async def test_a_public_address_is_accepted_with_the_production_default(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")

    created = await register_endpoint(client, headers, PUBLIC_URL)

    assert created["url"] == PUBLIC_URL
    assert await count_rows(db_engine, "webhook_endpoints") == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.0.0.1:8080/hooks",
        "http://localhost/",
        "http://10.0.0.1/",
        "http://192.168.1.10/hooks",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]/",
        # IPv4 inside IPv6 forms that `is_global` alone calls public: IPv4-compatible, NAT64,
        # 6to4, local-use NAT64.
        "http://[::127.0.0.1]/",
        "http://[::10.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:7f00:1::]/",
        "http://[2002:c0a8:10a::1]/",
        "http://[64:ff9b:1::5db8:d70e]/",
        # Multicast groups, which `is_global` calls public, and the same inside IPv6 forms.
        "http://224.0.0.251/",
        "http://239.255.255.250:1900/",
        "http://233.252.0.1/",
        "http://[ff02::1]/",
        "http://[ff0e::1]/",
        "http://[::ffff:224.0.0.251]/",
        "http://[64:ff9b::e000:fb]/",
        "http://[2002:e000:fb::1]/",
        "http://0.0.0.0/",
        "http://2130706433/",
        "ftp://93.184.215.14/hooks",
        "file:///etc/passwd",
        "https://user:secret@93.184.215.14/hooks",
        "https://user@93.184.215.14/hooks",
        "https://no-such-host.invalid/hooks",
        "not a url at all",
    ],
)
async def test_unsafe_urls_are_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, db_engine: AsyncEngine, url: str
) -> None:
    _, headers = await account_with_token(client, "seller")

    response = await client.post("/seller/webhooks", json={"url": url}, headers=headers)

    assert_problem(response, 422, "unsafe_webhook_url")
    assert await count_rows(db_engine, "webhook_endpoints") == 0
    assert await list_endpoints(client, headers) == []


async def test_the_setting_allows_loopback_but_still_refuses_other_schemes_and_credentials(
    hooks: HooksApp, receiver: Receiver, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(hooks.client, "seller")

    await register_endpoint(hooks.client, headers, receiver.url())
    await register_endpoint(hooks.client, headers, f"http://localhost:{receiver.port}/hooks")

    for url in ("ftp://127.0.0.1/hooks", f"http://user:pw@127.0.0.1:{receiver.port}/hooks"):
        response = await hooks.client.post("/seller/webhooks", json={"url": url}, headers=headers)
        assert_problem(response, 422, "unsafe_webhook_url")
    assert await count_rows(db_engine, "webhook_endpoints") == 2


async def test_deleting_an_endpoint_removes_it(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    kept = await register_endpoint(client, headers, PUBLIC_URL)
    gone = await register_endpoint(client, headers, PUBLIC_URL + "/2")

    response = await client.delete(f"/seller/webhooks/{gone['id']}", headers=headers)

    assert response.status_code == 204
    assert response.content == b""
    assert [item["id"] for item in await list_endpoints(client, headers)] == [kept["id"]]
    assert await count_rows(db_engine, "webhook_endpoints") == 1
    again = await client.delete(f"/seller/webhooks/{gone['id']}", headers=headers)
    assert_problem(again, 404, "webhook_endpoint_not_found")
    log = await client.get(f"/seller/webhooks/{gone['id']}/deliveries", headers=headers)
    assert_problem(log, 404, "webhook_endpoint_not_found")


async def test_another_sellers_endpoint_is_not_found(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, owner_headers = await account_with_token(client, "seller")
    _, other_headers = await account_with_token(client, "seller")
    endpoint = await register_endpoint(client, owner_headers, PUBLIC_URL)
    path = f"/seller/webhooks/{endpoint['id']}"

    assert_problem(
        await client.delete(path, headers=other_headers), 404, "webhook_endpoint_not_found"
    )
    assert_problem(
        await client.get(f"{path}/deliveries", headers=other_headers),
        404,
        "webhook_endpoint_not_found",
    )
    assert_problem(
        await client.post(f"{path}/test", headers=other_headers), 404, "webhook_endpoint_not_found"
    )

    assert await list_endpoints(client, other_headers) == []
    assert [item["id"] for item in await list_endpoints(client, owner_headers)] == [endpoint["id"]]
    assert await count_rows(db_engine, "events") == 0  # no test event was queued
    assert [row for row in await outbox_rows(db_engine) if row.kind == "webhook"] == []


async def test_partner_tokens_are_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, seller_headers = await account_with_token(client, "seller")
    _, partner_headers = await account_with_token(client, "partner")
    endpoint = await register_endpoint(client, seller_headers, PUBLIC_URL)
    path = f"/seller/webhooks/{endpoint['id']}"

    responses = [
        await client.post("/seller/webhooks", json={"url": PUBLIC_URL}, headers=partner_headers),
        await client.get("/seller/webhooks", headers=partner_headers),
        await client.delete(path, headers=partner_headers),
        await client.get(f"{path}/deliveries", headers=partner_headers),
        await client.post(f"{path}/test", headers=partner_headers),
    ]

    for response in responses:
        assert_problem(response, 403, "wrong_account_kind")
    assert await count_rows(db_engine, "webhook_endpoints") == 1


async def test_a_seller_may_register_ten_endpoints(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    for number in range(10):
        await register_endpoint(client, headers, f"{PUBLIC_URL}/{number}")

    response = await client.post("/seller/webhooks", json={"url": PUBLIC_URL}, headers=headers)

    assert_problem(response, 409, "too_many_webhook_endpoints")
    assert await count_rows(db_engine, "webhook_endpoints") == 10


async def test_concurrent_registrations_do_not_exceed_the_limit(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")

    responses = await asyncio.gather(
        *(
            client.post("/seller/webhooks", json={"url": f"{PUBLIC_URL}/{n}"}, headers=headers)
            for n in range(14)
        )
    )

    statuses = sorted(response.status_code for response in responses)
    assert await count_rows(db_engine, "webhook_endpoints") == 10, statuses
    assert statuses == [201] * 10 + [409] * 4


# --- signatures and payloads -----------------------------------------------------------------


async def test_a_created_shipment_reaches_the_receiver_signed_per_standard_webhooks(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url())
    shipment = await create_shipment(hooks.client, parties.seller_headers)
    [(event_id, event_type)] = await seller_events(db_engine, parties.seller["id"])
    assert event_type == "shipment.created"

    before = int(time.time())
    await drain(hook_worker())
    after = int(time.time())

    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hooks"
    assert request.headers["content-type"].startswith("application/json")
    assert request.headers["webhook-id"] == event_id
    assert before <= int(request.headers["webhook-timestamp"]) <= after
    assert request.headers["webhook-signature"].startswith("v1,")
    assert signature_verifies(endpoint["secret"], request.headers, request.body)

    payload = request.json()
    assert payload["type"] == "shipment.created"
    assert datetime.fromisoformat(payload["timestamp"]).tzinfo is not None
    # What happened, not a copy of the shipment: the integrator GETs the rest.
    assert payload["data"] == {
        "shipment_id": shipment["id"],
        "tracking_number": shipment["tracking_number"],
        "reference": shipment["reference"],
        "status": "placed",
        "version": 1,
        "changes": {
            "status": "placed",
            "estimated_delivery": payload["data"]["changes"]["estimated_delivery"],
            "partner": shipment["partner"],
        },
        "timeline_event": shipment["timeline"][0],
    }
    estimated = datetime.fromisoformat(payload["data"]["changes"]["estimated_delivery"])
    assert estimated == datetime.fromisoformat(shipment["estimated_delivery"])
    ShipmentEventData.model_validate(payload["data"])

    # Anything changed in transit breaks the signature.
    tampered = request.body.replace(b'"placed"', b'"delivered"', 1)
    assert tampered != request.body
    assert not signature_verifies(endpoint["secret"], request.headers, tampered)
    assert not signature_verifies(
        endpoint["secret"], {**request.headers, "webhook-id": str(uuid.uuid4())}, request.body
    )
    assert not signature_verifies(
        endpoint["secret"],
        {
            **request.headers,
            "webhook-timestamp": str(int(request.headers["webhook-timestamp"]) + 1),
        },
        request.body,
    )
    other_secret = "whsec_" + base64.b64encode(b"\x00" * 32).decode()
    assert not signature_verifies(other_secret, request.headers, request.body)
    # A replay signed correctly for a timestamp ten minutes old is refused as too old.
    stale = int(request.headers["webhook-timestamp"]) - 600
    replayed = {
        **request.headers,
        "webhook-timestamp": str(stale),
        "webhook-signature": Webhook(endpoint["secret"]).sign(
            request.headers["webhook-id"], datetime.fromtimestamp(stale, UTC), request.body
        ),
    }
    assert not signature_verifies(endpoint["secret"], replayed, request.body)


async def test_the_receiver_flags_a_request_its_endpoint_secret_does_not_verify(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory
) -> None:
    """The check every receiver makes of every request (receiver.py) can fail."""
    parties = await make_parties(hooks.client)
    await register_endpoint(hooks.client, parties.seller_headers, receiver.url())
    await create_shipment(hooks.client, parties.seller_headers)
    await drain(hook_worker())
    [delivered] = receiver.requests
    assert receiver.badly_signed == []

    forged = delivered.body.replace(b'"placed"', b'"delivered"', 1)
    signed = ("webhook-id", "webhook-timestamp", "webhook-signature")
    async with httpx.AsyncClient(trust_env=False) as raw:
        await raw.post(
            receiver.url(),
            content=forged,
            headers={name: delivered.headers[name] for name in signed},
        )

    [(flagged, reason)] = receiver.badly_signed
    assert flagged.body == forged
    assert reason == "no endpoint secret verifies the signature"
    receiver.badly_signed.clear()  # forged on purpose: not a failure of this test


async def test_each_change_sends_its_event_types_with_distinct_ids(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url())
    worker = hook_worker()
    seen = 0

    async def sent_since_last_look() -> list[ReceivedRequest]:
        nonlocal seen
        await drain(worker)
        new = receiver.requests[seen:]
        seen = len(receiver.requests)
        for request in new:
            assert signature_verifies(endpoint["secret"], request.headers, request.body)
        return new

    shipment = await create_shipment(hooks.client, parties.seller_headers)
    [created] = await sent_since_last_look()
    assert created.json()["type"] == "shipment.created"

    moved = await patch_shipment(
        hooks.client, parties.partner_headers, shipment["id"], status="in_transit"
    )
    assert moved.status_code == 200, moved.text
    [updated] = await sent_since_last_look()
    assert updated.json()["type"] == "shipment.updated"
    assert updated.json()["data"]["status"] == "in_transit"
    assert updated.json()["data"]["version"] == moved.json()["version"]
    assert updated.json()["data"]["changes"] == {"status": "in_transit"}
    assert updated.json()["data"]["timeline_event"] == moved.json()["timeline"][-1]

    # A new estimate with a scan: only the estimate changed.
    new_eta = "2030-01-02T03:04:05Z"
    scanned = await patch_shipment(
        hooks.client,
        parties.partner_headers,
        shipment["id"],
        status="in_transit",
        location_zip="03301",
        estimated_delivery=new_eta,
    )
    assert scanned.status_code == 200, scanned.text
    [rescheduled] = await sent_since_last_look()
    changes = rescheduled.json()["data"]["changes"]
    assert set(changes) == {"estimated_delivery"}
    assert datetime.fromisoformat(changes["estimated_delivery"]) == datetime.fromisoformat(new_eta)
    assert rescheduled.json()["data"]["timeline_event"]["location_zip"] == "03301"

    out = await patch_shipment(
        hooks.client, parties.partner_headers, shipment["id"], status="out_for_delivery"
    )
    assert out.status_code == 200, out.text
    code = await delivery_code(db_engine, shipment["id"])
    done = await patch_shipment(
        hooks.client,
        parties.partner_headers,
        shipment["id"],
        status="delivered",
        verification_code=code,
    )
    assert done.status_code == 200, done.text
    delivered_batch = await sent_since_last_look()
    # out_for_delivery (updated), then delivered (updated + delivered).
    assert types_of(delivered_batch) == [
        "shipment.delivered",
        "shipment.updated",
        "shipment.updated",
    ]
    [delivered] = [r for r in delivered_batch if r.json()["type"] == "shipment.delivered"]
    assert delivered.json()["data"]["status"] == "delivered"
    assert delivered.json()["data"]["changes"] == {"status": "delivered"}
    assert delivered.json()["data"]["timeline_event"]["status"] == "delivered"

    other = await create_shipment(hooks.client, parties.seller_headers)
    await sent_since_last_look()
    cancel = await hooks.client.post(
        f"/shipments/{other['id']}/cancel", headers=parties.seller_headers
    )
    assert cancel.status_code == 200, cancel.text
    cancelled_batch = await sent_since_last_look()
    assert types_of(cancelled_batch) == ["shipment.cancelled", "shipment.updated"]
    for request in cancelled_batch:
        assert request.json()["data"]["shipment_id"] == other["id"]
        assert request.json()["data"]["status"] == "cancelled"
        assert request.json()["data"]["changes"] == {"status": "cancelled"}
        assert request.json()["data"]["timeline_event"]["status"] == "cancelled"

    # Refused changes publish nothing.
    events_before = await seller_events(db_engine, parties.seller["id"])
    refused = [
        await patch_shipment(
            hooks.client, parties.partner_headers, shipment["id"], status="in_transit"
        ),
        await patch_shipment(hooks.client, parties.partner_headers, other["id"], note="late"),
        await hooks.client.post(f"/shipments/{other['id']}/cancel", headers=parties.seller_headers),
    ]
    for response in refused:
        assert_problem(response, 409, "invalid_transition")
    assert await sent_since_last_look() == []
    assert await seller_events(db_engine, parties.seller["id"]) == events_before

    # One delivery per event, each under the event's own id.
    ids = [request.headers["webhook-id"] for request in receiver.requests]
    assert len(ids) == len(set(ids)) == 9
    assert sorted(ids) == sorted(event_id for event_id, _ in events_before)


# --- at-least-once and the delivery log --------------------------------------------------------


async def test_a_failing_receiver_gets_the_same_event_until_it_answers_2xx(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url())
    receiver.answer(500, 500, 200)
    await create_shipment(hooks.client, parties.seller_headers)
    [(event_id, _)] = await seller_events(db_engine, parties.seller["id"])
    worker = hook_worker()

    await worker.run_once()
    [listed] = await list_endpoints(hooks.client, parties.seller_headers)
    assert listed["failing_since"] is not None
    assert listed["enabled"] is True
    for _ in range(2):
        await make_retries_due(db_engine)
        await worker.run_once()
    # Delivered: nothing more goes out, however long we wait.
    await make_retries_due(db_engine)
    await drain(worker)

    assert [request.answered for request in receiver.requests] == [500, 500, 200]
    assert {request.headers["webhook-id"] for request in receiver.requests} == {event_id}
    assert len({request.body for request in receiver.requests}) == 1
    for request in receiver.requests:
        assert signature_verifies(endpoint["secret"], request.headers, request.body)

    log = await deliveries(hooks.client, parties.seller_headers, endpoint["id"])
    assert [item["attempt"] for item in log] == [3, 2, 1]
    assert [item["succeeded"] for item in log] == [True, False, False]
    assert [item["status_code"] for item in log] == [200, 500, 500]
    assert {item["event_id"] for item in log} == {event_id}
    assert {item["event_type"] for item in log} == {"shipment.created"}
    assert [item["created_at"] for item in log] == sorted(
        (item["created_at"] for item in log), reverse=True
    )
    assert all(item["duration_ms"] >= 0 for item in log)
    assert await count_rows(db_engine, "webhook_deliveries") == 3
    [listed] = await list_endpoints(hooks.client, parties.seller_headers)
    assert listed["failing_since"] is None  # a success ends the run of failures


async def test_an_unreachable_receiver_is_logged_with_its_error(
    hooks: HooksApp, hook_worker: HookWorkerFactory, db_engine: AsyncEngine
) -> None:
    async with running_receiver() as closed:
        url = closed.url()
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, url)
    await create_shipment(hooks.client, parties.seller_headers)

    await hook_worker().run_once()

    [attempt] = await deliveries(hooks.client, parties.seller_headers, endpoint["id"])
    assert attempt["succeeded"] is False
    assert attempt["status_code"] is None
    assert attempt["error"]
    [row] = [row for row in await outbox_rows(db_engine) if row.kind == "webhook"]
    assert row.status == "pending"  # to be retried
    assert row.last_error


async def test_delivery_log_pages_newest_first(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory
) -> None:
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url())
    for _ in range(3):
        await create_shipment(hooks.client, parties.seller_headers)
    await drain(hook_worker())
    everything = await deliveries(hooks.client, parties.seller_headers, endpoint["id"])
    assert len(everything) == 3

    path = f"/seller/webhooks/{endpoint['id']}/deliveries"
    first = await hooks.client.get(path, params={"limit": 2}, headers=parties.seller_headers)
    assert first.status_code == 200
    cursor = first.json()["next_cursor"]
    assert cursor
    second = await hooks.client.get(
        path, params={"limit": 2, "cursor": cursor}, headers=parties.seller_headers
    )
    assert second.status_code == 200
    assert second.json()["next_cursor"] is None
    paged = [item["id"] for item in first.json()["items"] + second.json()["items"]]
    assert paged == [item["id"] for item in everything]


# --- an endpoint that keeps failing is disabled -------------------------------------------------


async def test_an_endpoint_failing_for_longer_than_the_limit_is_disabled(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(hooks.client)
    failing = await register_endpoint(hooks.client, parties.seller_headers, receiver.url("/bad"))
    healthy = await register_endpoint(hooks.client, parties.seller_headers, receiver.url("/ok"))
    receiver.answer(503, path="/bad")
    worker = hook_worker(webhook_disable_after_seconds=60)
    await create_shipment(hooks.client, parties.seller_headers)
    await worker.run_once()
    assert [request.answered for request in receiver.received_at("/bad")] == [503]
    by_id = {
        item["id"]: item for item in await list_endpoints(hooks.client, parties.seller_headers)
    }
    assert by_id[failing["id"]]["enabled"] is True  # one failure is not a day of failures
    assert by_id[failing["id"]]["failing_since"] is not None

    # The failures began two minutes ago: the next one is past the limit.
    await set_failing_since(db_engine, failing["id"], timedelta(minutes=2))
    receiver.answer(500, path="/bad")
    bad_before = len(receiver.received_at("/bad"))
    await make_retries_due(db_engine)
    await drain(worker)
    assert len(receiver.received_at("/bad")) == bad_before + 1

    by_id = {
        item["id"]: item for item in await list_endpoints(hooks.client, parties.seller_headers)
    }
    assert by_id[failing["id"]]["enabled"] is False
    reason = by_id[failing["id"]]["disabled_reason"]
    assert reason
    assert "500" in reason
    assert by_id[healthy["id"]]["enabled"] is True
    assert by_id[healthy["id"]]["disabled_reason"] is None

    # Later events are not queued for it, and nothing more reaches it; the other still gets them.
    queued_before = await webhook_rows_for(db_engine, failing["id"])
    ok_before = len(receiver.received_at("/ok"))
    bad_count = len(receiver.received_at("/bad"))
    await create_shipment(hooks.client, parties.seller_headers)
    assert await webhook_rows_for(db_engine, failing["id"]) == queued_before
    await make_retries_due(db_engine)
    await drain(worker)
    assert len(receiver.received_at("/bad")) == bad_count
    assert len(receiver.received_at("/ok")) == ok_before + 1

    response = await hooks.client.post(
        f"/seller/webhooks/{failing['id']}/test", headers=parties.seller_headers
    )
    assert_problem(response, 409, "webhook_endpoint_disabled")


async def test_failures_within_the_limit_keep_the_endpoint_enabled(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url())
    receiver.answer(500, 500)
    worker = hook_worker(webhook_disable_after_seconds=3600)
    await create_shipment(hooks.client, parties.seller_headers)
    await worker.run_once()
    await set_failing_since(db_engine, endpoint["id"], timedelta(minutes=2))

    await make_retries_due(db_engine)
    await worker.run_once()

    [listed] = await list_endpoints(hooks.client, parties.seller_headers)
    assert listed["enabled"] is True
    assert listed["disabled_reason"] is None
    assert [request.answered for request in receiver.requests] == [500, 500]


async def test_with_the_default_schedule_retries_span_about_a_day(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory, db_engine: AsyncEngine
) -> None:
    """One event to an endpoint that never answers 2xx, with the production retry schedule.

    Time is simulated: after each failure the wait the worker chose is skipped, and the
    endpoint's `failing_since` is moved back by the same amount, as if that time had passed.
    Retries should go on for about a day, so that an endpoint failing for a day gets disabled.
    """
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url())
    receiver.answer(*([500] * 50))
    # worker_settings shortens the backoff for other tests; put the production values back.
    defaults = {
        name: Settings.model_fields[name].default
        for name in (
            "outbox_backoff_base_seconds",
            "outbox_backoff_cap_seconds",
            "outbox_max_attempts",
            "webhook_disable_after_seconds",
        )
    }
    worker = hook_worker(**defaults)
    await create_shipment(hooks.client, parties.seller_headers)
    elapsed = timedelta()

    for _ in range(50):
        await worker.run_once()
        [row] = [row for row in await outbox_rows(db_engine) if row.kind == "webhook"]
        if row.status != "pending":
            break
        wait = row.next_attempt_at - await database_now(db_engine)
        elapsed += max(wait, timedelta())
        await set_failing_since(db_engine, endpoint["id"], elapsed)
        await make_retries_due(db_engine)

    [listed] = await list_endpoints(hooks.client, parties.seller_headers)
    assert elapsed >= timedelta(hours=20), (
        f"retries stopped after {elapsed} ({len(receiver.requests)} attempts, row {row.status}); "
        f"endpoint enabled={listed['enabled']}"
    )
    # Failing for about a day is what disables an endpoint.
    assert listed["enabled"] is False


# --- test events -------------------------------------------------------------------------------


async def test_a_test_event_goes_to_that_endpoint_only(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory
) -> None:
    _, headers = await account_with_token(hooks.client, "seller")
    target = await register_endpoint(hooks.client, headers, receiver.url("/target"))
    await register_endpoint(hooks.client, headers, receiver.url("/bystander"))

    response = await hooks.client.post(f"/seller/webhooks/{target['id']}/test", headers=headers)

    assert response.status_code == 202, response.text
    event_id = response.json()["event_id"]
    assert uuid.UUID(event_id)
    await drain(hook_worker())
    [request] = receiver.requests
    assert request.path == "/target"
    assert request.headers["webhook-id"] == event_id
    assert signature_verifies(target["secret"], request.headers, request.body)
    assert request.json()["type"] == "webhook.test"
    assert receiver.received_at("/bystander") == []
    [attempt] = await deliveries(hooks.client, headers, target["id"])
    assert attempt["event_id"] == event_id
    assert attempt["event_type"] == "webhook.test"
    assert attempt["succeeded"] is True
    assert attempt["status_code"] == 200


# --- OpenAPI -----------------------------------------------------------------------------------


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        *_, name = schema["$ref"].split("/")
        schema = document["components"]["schemas"][name]
    return schema


async def test_openapi_documents_the_webhook_payloads(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()

    webhooks = document["webhooks"]
    assert {
        "shipment.created",
        "shipment.updated",
        "shipment.delivered",
        "shipment.cancelled",
    } <= set(webhooks)
    for name in (
        "shipment.created",
        "shipment.updated",
        "shipment.delivered",
        "shipment.cancelled",
    ):
        operation = webhooks[name]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        payload = resolve(document, body)
        assert {"type", "timestamp", "data"} <= set(payload["properties"])
        data = resolve(document, payload["properties"]["data"])
        assert set(data["properties"]) == {
            "shipment_id",
            "tracking_number",
            "reference",
            "status",
            "version",
            "changes",
            "timeline_event",
        }
        changes = resolve(document, data["properties"]["changes"])
        assert set(changes["properties"]) == {
            "status",
            "estimated_delivery",
            "partner",
            "failure_reason",
            "attempts",
            "recipient",
            "destination",
        }
        assert changes.get("required", []) == []
        assert "GET /shipments/{id}" in operation["description"]
        assert "webhook-signature" in operation["description"]
        assert any(status.startswith("2") for status in operation["responses"])
