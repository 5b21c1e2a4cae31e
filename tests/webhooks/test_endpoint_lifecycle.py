"""Running an endpoint over time, against real PostgreSQL, Redis and a loopback receiver:
enabling it again after the worker disabled it, rotating its signing secret with an overlap
(verified with the Standard Webhooks reference library, `standardwebhooks`), and one endpoint
per URL (per seller and mode), settled by the database."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.webhooks.webhooks import sign
from tests.assertions import assert_problem
from tests.conftest import count_rows
from tests.factories import account_with_token
from tests.outbox.conftest import database_now, drain, make_retries_due
from tests.shipments.factories import create_shipment, make_parties
from tests.testmode.test_test_mode import new_key
from tests.webhooks.conftest import HookWorkerFactory
from tests.webhooks.receiver import (
    HooksApp,
    ReceivedRequest,
    Receiver,
    register_endpoint,
    signature_verifies,
)
from tests.webhooks.test_webhooks import PUBLIC_URL, list_endpoints, set_failing_since

# --- helpers --------------------------------------------------------------------------------


async def stored_endpoint(engine: AsyncEngine, endpoint_id: str) -> dict[str, Any]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT * FROM webhook_endpoints WHERE id = :id"),
                {"id": uuid.UUID(endpoint_id)},
            )
        ).one()
    return dict(row._mapping)


async def rotate(
    client: httpx.AsyncClient, headers: dict[str, str], endpoint_id: str, **body: Any
) -> httpx.Response:
    return await client.post(
        f"/seller/webhooks/{endpoint_id}/rotate-secret", json=body, headers=headers
    )


async def rotated(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    endpoint_id: str,
    receiver: Receiver,
    path: str = "/hooks",
    **body: Any,
) -> dict[str, Any]:
    """Rotate (asserting 200) and let the receiver know the new secret of `path`."""
    response = await rotate(client, headers, endpoint_id, **body)
    assert response.status_code == 200, response.text
    endpoint: dict[str, Any] = response.json()
    receiver.secrets[path].append(endpoint["secret"])
    return endpoint


async def expire_previous_secrets(engine: AsyncEngine) -> None:
    """As if every rotation's overlap had run out."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE webhook_endpoints SET previous_secret_expires_at = now() - interval '1s'"
                " WHERE previous_secret_expires_at IS NOT NULL"
            )
        )


def signatures(request: ReceivedRequest) -> list[str]:
    return request.headers["webhook-signature"].split(" ")


async def delivered_after(
    hooks: HooksApp, headers: dict[str, str], worker: Any, receiver: Receiver
) -> ReceivedRequest:
    """Create a shipment and deliver its one event; returns the request the receiver took."""
    before = len(receiver.requests)
    await create_shipment(hooks.client, headers)
    await drain(worker)
    [request] = receiver.requests[before:]
    return request


# --- enabling a disabled endpoint -------------------------------------------------------------


async def test_a_disabled_endpoint_enabled_again_gets_new_events_and_nothing_missed(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(hooks.client)
    headers = parties.seller_headers
    endpoint = await register_endpoint(hooks.client, headers, receiver.url("/bad"))
    path = f"/seller/webhooks/{endpoint['id']}"
    # Disabled by the worker, the way it happens: failing for longer than the limit.
    worker = hook_worker(webhook_disable_after_seconds=60)
    receiver.answer(503, 500, path="/bad")
    await create_shipment(hooks.client, headers)
    await worker.run_once()
    await set_failing_since(db_engine, endpoint["id"], timedelta(minutes=2))
    await make_retries_due(db_engine)
    await drain(worker)
    [disabled] = await list_endpoints(hooks.client, headers)
    assert disabled["enabled"] is False
    assert disabled["disabled_reason"]
    # An event while it is disabled is never queued for it, and the retry of the failing one,
    # due while it is disabled, is dropped.
    missed = await create_shipment(hooks.client, headers)
    await make_retries_due(db_engine)
    await drain(worker)
    received_while_disabled = len(receiver.requests)

    response = await hooks.client.post(f"{path}/enable", headers=headers)

    assert response.status_code == 200, response.text
    enabled = response.json()
    assert enabled["id"] == endpoint["id"]
    assert enabled["enabled"] is True
    assert enabled["disabled_reason"] is None
    assert enabled["failing_since"] is None
    assert "secret" not in enabled
    assert await list_endpoints(hooks.client, headers) == [enabled]
    row = await stored_endpoint(db_engine, endpoint["id"])
    assert (row["enabled"], row["disabled_reason"], row["failing_since"]) == (True, None, None)
    assert row["secret"] == endpoint["secret"]
    # Nothing from the disabled time is sent again...
    await make_retries_due(db_engine)
    await drain(worker)
    assert len(receiver.requests) == received_while_disabled
    # ...the feed has it...
    feed = await hooks.client.get("/events", headers=headers)
    assert missed["id"] in {item["shipment_id"] for item in feed.json()["items"]}
    # ...and new events go out again, as do test sends.
    fresh = await delivered_after(hooks, headers, worker, receiver)
    assert fresh.path == "/bad"
    assert fresh.answered == 200
    assert fresh.json()["data"]["shipment_id"] != missed["id"]
    test_send = await hooks.client.post(f"{path}/test", headers=headers)
    assert test_send.status_code == 202, test_send.text


async def test_enabling_an_enabled_endpoint_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    endpoint = await register_endpoint(client, headers, PUBLIC_URL)
    await set_failing_since(db_engine, endpoint["id"], timedelta(minutes=5))
    before = await stored_endpoint(db_engine, endpoint["id"])

    response = await client.post(f"/seller/webhooks/{endpoint['id']}/enable", headers=headers)

    assert response.status_code == 200, response.text
    assert response.json()["enabled"] is True
    # A run of failures still going on is not forgiven by asking.
    assert response.json()["failing_since"] is not None
    assert await stored_endpoint(db_engine, endpoint["id"]) == before


async def test_only_the_owner_in_its_mode_may_enable_an_endpoint(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, owner = await account_with_token(client, "seller")
    _, other = await account_with_token(client, "seller")
    _, partner = await account_with_token(client, "partner")
    test_key = await new_key(client, owner, "test")
    live = await register_endpoint(client, owner, PUBLIC_URL)
    test_endpoint = await register_endpoint(client, test_key, PUBLIC_URL)
    async with db_engine.begin() as connection:
        await connection.execute(
            text("UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'failing'")
        )

    def enable(endpoint: dict[str, Any], headers: dict[str, str]) -> Any:
        return client.post(f"/seller/webhooks/{endpoint['id']}/enable", headers=headers)

    assert_problem(await enable(live, other), 404, "webhook_endpoint_not_found")
    assert_problem(await enable(live, test_key), 404, "webhook_endpoint_not_found")
    assert_problem(await enable(test_endpoint, owner), 404, "webhook_endpoint_not_found")
    assert_problem(await enable(live, partner), 403, "wrong_account_kind")
    assert_problem(await enable(live, {}), 401, "not_authenticated")
    assert [row["enabled"] for row in await list_endpoints(client, owner)] == [False]

    # A test key enables its own test endpoint, and only that one.
    response = await enable(test_endpoint, test_key)
    assert response.status_code == 200, response.text
    assert response.json()["livemode"] is False
    assert response.json()["enabled"] is True
    assert (await stored_endpoint(db_engine, live["id"]))["enabled"] is False


# --- rotating the signing secret --------------------------------------------------------------


async def test_during_the_overlap_both_secrets_verify_and_after_it_only_the_new_one(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(hooks.client)
    headers = parties.seller_headers
    endpoint = await register_endpoint(hooks.client, headers, receiver.url())
    old_secret = endpoint["secret"]
    worker = hook_worker()

    response = await rotate(hooks.client, headers, endpoint["id"], overlap_seconds=3600)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    new_secret = body["secret"]
    receiver.secrets["/hooks"].append(new_secret)
    assert new_secret.startswith("whsec_")
    assert new_secret != old_secret
    assert {key: body[key] for key in ("id", "url", "enabled")} == {
        key: endpoint[key] for key in ("id", "url", "enabled")
    }
    now = await database_now(db_engine)
    overlap_ends = datetime.fromisoformat(body["previous_secret_expires_at"])
    assert timedelta(minutes=59) < overlap_ends - now <= timedelta(hours=1)
    [listed] = await list_endpoints(hooks.client, headers)
    assert listed["previous_secret_expires_at"] == body["previous_secret_expires_at"]
    assert new_secret not in str(listed)
    assert old_secret not in str(listed)

    # During the overlap: `v1,<new> v1,<old>`, each accepted by a receiver holding just one.
    during = await delivered_after(hooks, headers, worker, receiver)
    timestamp = int(during.headers["webhook-timestamp"])
    message_id = during.headers["webhook-id"]
    assert signatures(during) == [
        sign(new_secret, message_id, timestamp, during.body),
        sign(old_secret, message_id, timestamp, during.body),
    ]
    assert signature_verifies(old_secret, during.headers, during.body)
    assert signature_verifies(new_secret, during.headers, during.body)

    # After the overlap: the new secret only.
    await expire_previous_secrets(db_engine)
    after = await delivered_after(hooks, headers, worker, receiver)
    assert len(signatures(after)) == 1
    assert signature_verifies(new_secret, after.headers, after.body)
    assert not signature_verifies(old_secret, after.headers, after.body)
    [listed] = await list_endpoints(hooks.client, headers)
    assert listed["previous_secret_expires_at"] is None


async def test_rotating_during_an_overlap_retires_the_secret_before_the_current_one(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory
) -> None:
    parties = await make_parties(hooks.client)
    headers = parties.seller_headers
    endpoint = await register_endpoint(hooks.client, headers, receiver.url())
    first = endpoint["secret"]
    second = (await rotated(hooks.client, headers, endpoint["id"], receiver))["secret"]
    third = (await rotated(hooks.client, headers, endpoint["id"], receiver))["secret"]

    request = await delivered_after(hooks, headers, hook_worker(), receiver)

    assert len(signatures(request)) == 2
    assert signature_verifies(third, request.headers, request.body)
    assert signature_verifies(second, request.headers, request.body)
    assert not signature_verifies(first, request.headers, request.body)


async def test_an_overlap_of_zero_retires_the_old_secret_at_once(
    hooks: HooksApp, receiver: Receiver, hook_worker: HookWorkerFactory, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(hooks.client)
    headers = parties.seller_headers
    endpoint = await register_endpoint(hooks.client, headers, receiver.url())
    await rotated(hooks.client, headers, endpoint["id"], receiver)  # an overlap under way

    body = await rotated(hooks.client, headers, endpoint["id"], receiver, overlap_seconds=0)
    request = await delivered_after(hooks, headers, hook_worker(), receiver)

    assert body["previous_secret_expires_at"] is None
    assert signatures(request) == [
        sign(
            body["secret"],
            request.headers["webhook-id"],
            int(request.headers["webhook-timestamp"]),
            request.body,
        )
    ]
    row = await stored_endpoint(db_engine, endpoint["id"])
    assert (row["previous_secret"], row["previous_secret_expires_at"]) == (None, None)


async def test_the_overlap_defaults_to_a_day(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    endpoint = await register_endpoint(client, headers, PUBLIC_URL)

    response = await rotate(client, headers, endpoint["id"])  # the body `{}`

    assert response.status_code == 200, response.text
    ends = datetime.fromisoformat(response.json()["previous_secret_expires_at"])
    assert (
        timedelta(hours=23, minutes=59)
        < ends - await database_now(db_engine)
        <= timedelta(hours=24)
    )
    row = await stored_endpoint(db_engine, endpoint["id"])
    assert row["previous_secret"] == endpoint["secret"]
    assert row["secret"] == response.json()["secret"]


@pytest.mark.parametrize(
    "content",
    [
        b'{"overlap_seconds": -1}',
        b'{"overlap_seconds": 604801}',
        b'{"overlap_seconds": 1.5}',
        b'{"overlap_seconds": "a day"}',
        b'{"overlap_seconds": null}',
        b'{"overlap": 60}',
        b"",
    ],
)
async def test_a_bad_overlap_is_refused_and_the_secret_kept(
    client: httpx.AsyncClient, db_engine: AsyncEngine, content: bytes
) -> None:
    _, headers = await account_with_token(client, "seller")
    endpoint = await register_endpoint(client, headers, PUBLIC_URL)
    before = await stored_endpoint(db_engine, endpoint["id"])

    response = await client.post(
        f"/seller/webhooks/{endpoint['id']}/rotate-secret",
        content=content,
        headers={**headers, "Content-Type": "application/json"},
    )

    assert_problem(response, 422, "validation_failed")
    assert await stored_endpoint(db_engine, endpoint["id"]) == before


async def test_only_the_owner_in_its_mode_may_rotate_a_secret(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, owner = await account_with_token(client, "seller")
    _, other = await account_with_token(client, "seller")
    _, partner = await account_with_token(client, "partner")
    test_key = await new_key(client, owner, "test")
    live = await register_endpoint(client, owner, PUBLIC_URL)
    before = await stored_endpoint(db_engine, live["id"])

    assert_problem(await rotate(client, other, live["id"]), 404, "webhook_endpoint_not_found")
    assert_problem(await rotate(client, test_key, live["id"]), 404, "webhook_endpoint_not_found")
    assert_problem(await rotate(client, partner, live["id"]), 403, "wrong_account_kind")
    assert await stored_endpoint(db_engine, live["id"]) == before

    test_endpoint = await register_endpoint(client, test_key, PUBLIC_URL)
    response = await rotate(client, test_key, test_endpoint["id"])
    assert response.status_code == 200, response.text
    assert response.json()["livemode"] is False


async def until_waiting_for_locks(engine: AsyncEngine, sessions: int) -> None:
    """Until `sessions` sessions of this database wait for a lock."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with asyncio.timeout(10):
        while True:
            async with engine.connect() as connection:
                if (await connection.execute(query)).scalar_one() >= sessions:
                    return
            await asyncio.sleep(0.01)


async def test_concurrent_rotations_each_retire_the_secret_before_them(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    endpoint = await register_endpoint(client, headers, PUBLIC_URL)

    # Both rotations are let go together, once each waits for the row (held here): without a
    # lock of their own they would both read the original secret and both retire it.
    async with db_engine.connect() as holder:
        held = await holder.begin()
        await holder.execute(
            text("SELECT 1 FROM webhook_endpoints WHERE id = :id FOR UPDATE"),
            {"id": uuid.UUID(endpoint["id"])},
        )
        rotations = [asyncio.create_task(rotate(client, headers, endpoint["id"])) for _ in range(2)]
        await until_waiting_for_locks(db_engine, len(rotations))
        await held.rollback()
        responses = await asyncio.gather(*rotations)

    assert [response.status_code for response in responses] == [200, 200]
    issued = {response.json()["secret"] for response in responses}
    row = await stored_endpoint(db_engine, endpoint["id"])
    # One after the other: the second's secret signs beside the first's, and the original
    # secret, which only the first saw as current, signs no more.
    assert {row["secret"], row["previous_secret"]} == issued


# --- one endpoint per URL ---------------------------------------------------------------------


async def test_a_url_is_registered_once_per_seller_and_mode(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    _, other = await account_with_token(client, "seller")
    test_key = await new_key(client, headers, "test")
    first = await register_endpoint(client, headers, PUBLIC_URL)

    again = await client.post(
        "/seller/webhooks", json={"url": PUBLIC_URL, "description": "again"}, headers=headers
    )

    problem = assert_problem(again, 409, "webhook_url_taken")
    assert problem["endpoint_id"] == first["id"]
    assert "secret" not in again.text
    assert [item["id"] for item in await list_endpoints(client, headers)] == [first["id"]]
    assert await count_rows(db_engine, "webhook_endpoints") == 1
    # The test mode and another seller have URLs of their own.
    test_endpoint = await register_endpoint(client, test_key, PUBLIC_URL)
    assert test_endpoint["livemode"] is False
    test_again = await client.post("/seller/webhooks", json={"url": PUBLIC_URL}, headers=test_key)
    assert (
        assert_problem(test_again, 409, "webhook_url_taken")["endpoint_id"] == (test_endpoint["id"])
    )
    await register_endpoint(client, other, PUBLIC_URL)
    # Another URL is accepted, and so is the same one once its endpoint is deleted.
    await register_endpoint(client, headers, PUBLIC_URL + "/2")
    deleted = await client.delete(f"/seller/webhooks/{first['id']}", headers=headers)
    assert deleted.status_code == 204
    await register_endpoint(client, headers, PUBLIC_URL)
    assert await count_rows(db_engine, "webhook_endpoints") == 4


async def test_concurrent_registrations_of_one_url_store_one_endpoint(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")

    responses = await asyncio.gather(
        *(
            client.post("/seller/webhooks", json={"url": PUBLIC_URL}, headers=headers)
            for _ in range(8)
        )
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 7
    [created] = [response.json() for response in responses if response.status_code == 201]
    for response in responses:
        if response.status_code == 409:
            assert (
                assert_problem(response, 409, "webhook_url_taken")["endpoint_id"] == (created["id"])
            )
    assert await count_rows(db_engine, "webhook_endpoints") == 1


async def test_the_database_refuses_a_second_endpoint_for_a_url(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    # Any writer, not only the API: the unique index settles it.
    seller, headers = await account_with_token(client, "seller")
    endpoint = await register_endpoint(client, headers, PUBLIC_URL)
    insert = text(
        "INSERT INTO webhook_endpoints (id, seller_id, url, secret, enabled, created_at, livemode)"
        " VALUES (:id, :seller, :url, 'whsec_x', true, now(), true)"
    )

    with pytest.raises(IntegrityError, match="ix_webhook_endpoints_seller_mode_url"):
        async with db_engine.begin() as connection:
            await connection.execute(
                insert,
                {"id": uuid.uuid4(), "seller": uuid.UUID(seller["id"]), "url": endpoint["url"]},
            )
    assert await count_rows(db_engine, "webhook_endpoints") == 1


async def test_a_long_url_outside_ascii_is_registered_once(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    # 2000 characters of 2-byte UTF-8: more than a B-tree entry holds, were the URL itself
    # indexed rather than its digest.
    url = PUBLIC_URL + "/" + "é" * (2000 - len(PUBLIC_URL) - 1)
    assert len(url) == 2000
    _, headers = await account_with_token(client, "seller")

    created = await register_endpoint(client, headers, url)
    again = await client.post("/seller/webhooks", json={"url": url}, headers=headers)

    assert created["url"] == url
    assert_problem(again, 409, "webhook_url_taken")
    assert await count_rows(db_engine, "webhook_endpoints") == 1


async def test_registration_is_not_cached(client: httpx.AsyncClient) -> None:
    _, headers = await account_with_token(client, "seller")

    response = await client.post("/seller/webhooks", json={"url": PUBLIC_URL}, headers=headers)

    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
