"""API keys (product.md §11.1): created and deleted with a password login, used as a bearer
credential within their scopes, refused at once when deleted or expired, never stored in clear."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.accounts.api_keys.models import KeyMode
from backend.accounts.api_keys.secret import new_secret
from backend.accounts.tools import AccountTools
from backend.config import Settings
from backend.context import app_context
from backend.main import create_app
from tests.assertions import assert_problem
from tests.conftest import StatementLog, count_rows, running_client
from tests.factories import account_with_token, bearer, create_api_key
from tests.shipments.factories import create_shipment, make_parties, patch_shipment

SECRET = re.compile(r"^st_(live|test)_[0-9A-Za-z]{49}$")
SELLER_SCOPES = ["shipments:read", "shipments:write", "webhooks", "events:read"]


async def create_key(
    client: httpx.AsyncClient,
    kind: str,
    headers: dict[str, str],
    scopes: list[str] | None = None,
    **body: Any,
) -> dict[str, Any]:
    scopes = scopes or ["shipments:read"]
    return await create_api_key(
        client, headers, kind=kind, scopes=scopes, **{"name": "Warehouse sync", **body}
    )


async def stored_keys(db_engine: AsyncEngine) -> list[dict[str, Any]]:
    async with db_engine.connect() as connection:
        rows = await connection.execute(text("SELECT * FROM api_keys"))
        return [dict(row._mapping) for row in rows]


async def first_feed_page(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    """The feed once it lists something. It shows an event once every older transaction on the
    PostgreSQL server has ended: at once, unless another database's transaction on a shared
    test server holds it back for longer than the feed waits."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        feed = await client.get("/events", headers=headers)
        if feed.json().get("items") or asyncio.get_running_loop().time() > deadline:
            return feed
        await asyncio.sleep(0.05)


async def drain_key_usage(app: FastAPI) -> None:
    await app_context(app).part(AccountTools).key_usage.drain()


async def test_a_key_is_shown_once_and_stored_only_as_its_digest(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    response = await client.post(
        "/seller/api-keys",
        json={"name": "Shop", "scopes": ["shipments:write", "shipments:read"], "mode": "live"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    created = response.json()
    secret = created["secret"]
    assert SECRET.match(secret)
    assert secret.startswith("st_live_")
    assert secret.startswith(created["prefix"])
    assert len(created["prefix"]) < 20
    assert created["scopes"] == ["shipments:read", "shipments:write"]
    assert created["mode"] == "live"
    assert created["last_used_at"] is None

    [row] = await stored_keys(db_engine)
    assert bytes(row["digest"]) == hashlib.sha256(secret.encode()).digest()
    assert all(secret not in str(value) for value in row.values())

    listed = await client.get("/seller/api-keys", headers=headers)
    assert listed.status_code == 200
    [item] = listed.json()["items"]
    assert "secret" not in item
    assert item == {key: value for key, value in created.items() if key != "secret"}


async def test_a_key_works_within_its_scopes_only(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    reader = await create_key(client, "seller", parties.seller_headers, ["shipments:read"])
    writer = await create_key(client, "seller", parties.seller_headers, ["shipments:write"])

    created = await create_shipment(client, bearer(writer["secret"]))
    assert created["seller_id"] == parties.seller["id"]
    read = await client.get(f"/shipments/{created['id']}", headers=bearer(reader["secret"]))
    assert read.status_code == 200
    assert read.json()["id"] == created["id"]

    refused = await client.get("/shipments", headers=bearer(writer["secret"]))
    problem = assert_problem(refused, 403, "insufficient_scope")
    assert "shipments:read" in problem["detail"]
    assert refused.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="shipments:read"'
    )
    for path, scope in (("/seller/webhooks", "webhooks"), ("/events", "events:read")):
        response = await client.get(path, headers=bearer(reader["secret"]))
        assert scope in assert_problem(response, 403, "insufficient_scope")["detail"]


async def test_seller_keys_reach_webhooks_and_the_feed_with_their_scopes(
    client: httpx.AsyncClient,
) -> None:
    parties = await make_parties(client)
    key = await create_key(client, "seller", parties.seller_headers, SELLER_SCOPES)
    created = await create_shipment(client, bearer(key["secret"]))

    feed = await first_feed_page(client, bearer(key["secret"]))
    assert [event["data"]["shipment_id"] for event in feed.json()["items"]] == [created["id"]]
    webhooks = await client.get("/seller/webhooks", headers=bearer(key["secret"]))
    assert webhooks.status_code == 200, webhooks.text


async def test_a_partner_key_reports_steps_on_its_own_shipments(
    client: httpx.AsyncClient,
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    key = await create_key(
        client, "partner", parties.partner_headers, ["shipments:read", "shipments:write"]
    )
    headers = bearer(key["secret"])

    moved = await patch_shipment(client, headers, shipment["id"], status="in_transit")
    assert moved.status_code == 200, moved.text
    listed = await client.get("/shipments", headers=headers)
    assert [item["id"] for item in listed.json()["items"]] == [shipment["id"]]
    # The other kind's routes: 403, as with a token of the wrong kind.
    assert_problem(await client.get("/seller/webhooks", headers=headers), 403, "wrong_account_kind")
    assert_problem(
        await client.post("/shipments", json={}, headers=headers), 403, "wrong_account_kind"
    )


@pytest.mark.parametrize("kind", ["seller", "partner"])
async def test_keys_cannot_manage_keys_or_the_account(client: httpx.AsyncClient, kind: str) -> None:
    _, headers = await account_with_token(client, kind)
    key = await create_key(client, kind, headers)
    with_key = bearer(key["secret"])

    for method, path in (
        ("POST", f"/{kind}/api-keys"),
        ("GET", f"/{kind}/api-keys"),
        ("DELETE", f"/{kind}/api-keys/{key['id']}"),
        ("GET", f"/{kind}/me"),
        ("POST", f"/{kind}/logout"),
    ):
        body = {"name": "x", "scopes": ["shipments:read"], "mode": "live"}
        sends_body = path.endswith("/api-keys") and method == "POST"
        response = await client.request(
            method, path, headers=with_key, json=body if sends_body else None
        )
        assert_problem(response, 403, "access_token_required")
    listed = await client.get(f"/{kind}/api-keys", headers=headers)
    assert [item["id"] for item in listed.json()["items"]] == [key["id"]]


async def test_unknown_malformed_deleted_and_expired_keys_are_invalid_tokens(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    deleted = await create_key(client, "seller", headers)
    expiring = await create_key(client, "seller", headers)
    tampered = deleted["secret"][:-1] + ("A" if deleted["secret"][-1] != "A" else "B")
    never_issued = new_secret(KeyMode.live).secret

    assert (
        await client.delete(f"/seller/api-keys/{deleted['id']}", headers=headers)
    ).status_code == 204
    async with db_engine.begin() as connection:
        await connection.execute(
            text("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": expiring["id"]},
        )

    for secret in (deleted["secret"], expiring["secret"], tampered, never_issued, "st_live_x"):
        response = await client.get("/shipments", headers=bearer(secret))
        assert_problem(response, 401, "invalid_token")
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_refused_creations_store_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, seller_headers = await account_with_token(client, "seller")
    _, partner_headers = await account_with_token(client, "partner")
    base = {"name": "Shop", "scopes": ["shipments:read"], "mode": "live"}
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    for kind, headers, body, code in (
        ("seller", seller_headers, {**base, "scopes": ["shipments:delete"]}, "validation_failed"),
        ("seller", seller_headers, {**base, "scopes": []}, "validation_failed"),
        ("seller", seller_headers, {**base, "mode": "sandbox"}, "validation_failed"),
        ("seller", seller_headers, {**base, "expires_at": past}, "validation_failed"),
        (
            "seller",
            seller_headers,
            {**base, "expires_at": "2030-01-01T00:00:00"},
            "validation_failed",
        ),
        ("seller", seller_headers, {**base, "prefix": "st_live_mine"}, "validation_failed"),
        ("partner", partner_headers, {**base, "scopes": ["webhooks"]}, "scope_not_allowed"),
        ("partner", partner_headers, {**base, "scopes": ["events:read"]}, "scope_not_allowed"),
    ):
        response = await client.post(f"/{kind}/api-keys", json=body, headers=headers)
        assert_problem(response, 422, code)
    assert await count_rows(db_engine, "api_keys") == 0


async def test_at_most_twenty_keys_even_when_created_at_once(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    body = {"name": "Shop", "scopes": ["shipments:read"], "mode": "live"}
    responses = await asyncio.gather(
        *(client.post("/seller/api-keys", json=body, headers=headers) for _ in range(25))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * 20 + [409] * 5
    for refused in (response for response in responses if response.status_code == 409):
        assert_problem(refused, 409, "too_many_keys")
    assert await count_rows(db_engine, "api_keys") == 20
    # Another account has its own twenty.
    _, other = await account_with_token(client, "seller")
    await create_key(client, "seller", other)


async def test_deleting_another_accounts_key_is_404_and_leaves_it_working(
    client: httpx.AsyncClient,
) -> None:
    _, owner = await account_with_token(client, "seller")
    _, stranger = await account_with_token(client, "seller")
    _, partner = await account_with_token(client, "partner")
    key = await create_key(client, "seller", owner)

    for headers, kind in ((stranger, "seller"), (partner, "partner")):
        response = await client.delete(f"/{kind}/api-keys/{key['id']}", headers=headers)
        assert_problem(response, 404, "api_key_not_found")
    assert (await client.get("/shipments", headers=bearer(key["secret"]))).status_code == 200
    assert_problem(
        await client.delete(f"/seller/api-keys/{uuid.uuid4()}", headers=owner),
        404,
        "api_key_not_found",
    )


async def test_last_used_is_recorded_at_most_once_a_minute(
    client: httpx.AsyncClient, app: FastAPI, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(client, "seller")
    key = await create_key(client, "seller", headers)

    assert (await client.get("/shipments", headers=bearer(key["secret"]))).status_code == 200
    await drain_key_usage(app)
    [first] = await stored_keys(db_engine)
    assert first["last_used_at"] is not None
    for _ in range(3):
        assert (await client.get("/shipments", headers=bearer(key["secret"]))).status_code == 200
    await drain_key_usage(app)
    [again] = await stored_keys(db_engine)
    assert again["last_used_at"] == first["last_used_at"]

    # A minute later, the next use is recorded.
    async with db_engine.begin() as connection:
        await connection.execute(
            text("UPDATE api_keys SET last_used_at = last_used_at - interval '61 seconds'")
        )
    assert (await client.get("/shipments", headers=bearer(key["secret"]))).status_code == 200
    await drain_key_usage(app)
    [later] = await stored_keys(db_engine)
    assert later["last_used_at"] > first["last_used_at"] - timedelta(seconds=61)
    listed = (await client.get("/seller/api-keys", headers=headers)).json()["items"]
    assert listed[0]["last_used_at"] is not None


@pytest.fixture
async def tightly_limited(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"api_key_requests_per_second": 3}))
    async with running_client(app) as http:
        yield http


async def test_each_key_has_its_own_rate_limit(tightly_limited: httpx.AsyncClient) -> None:
    client = tightly_limited
    _, headers = await account_with_token(client, "seller")
    busy = await create_key(client, "seller", headers)
    quiet = await create_key(client, "seller", headers)

    responses = await asyncio.gather(
        *(client.get("/shipments", headers=bearer(busy["secret"])) for _ in range(6))
    )
    limited = [response for response in responses if response.status_code == 429]
    assert limited, [response.status_code for response in responses]
    for response in limited:
        assert_problem(response, 429, "rate_limited")
        assert int(response.headers["retry-after"]) >= 1
    assert (await client.get("/shipments", headers=bearer(quiet["secret"]))).status_code == 200
    # Access tokens are not counted against the account's keys.
    assert (await client.get("/shipments", headers=headers)).status_code == 200


async def test_a_key_costs_no_more_queries_than_a_token(
    client: httpx.AsyncClient, app: FastAPI, sql_log: StatementLog
) -> None:
    parties = await make_parties(client)
    key = await create_key(client, "seller", parties.seller_headers)
    shipment = await create_shipment(client, parties.seller_headers)
    url = f"/shipments/{shipment['id']}"
    # Recorded beside the first use, once a minute: not part of a request's cost.
    assert (await client.get(url, headers=bearer(key["secret"]))).status_code == 200
    await drain_key_usage(app)

    counts = {}
    for name, headers in (("token", parties.seller_headers), ("key", bearer(key["secret"]))):
        sql_log.statements.clear()
        assert (await client.get(url, headers=headers)).status_code == 200
        counts[name] = len(sql_log.queries())
    assert counts["key"] <= counts["token"] == 3, counts


async def test_suspended_partners_get_nothing_with_a_key(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    await create_shipment(client, parties.seller_headers)
    key = await create_key(client, "partner", parties.partner_headers)
    async with db_engine.begin() as connection:
        await connection.execute(
            text("UPDATE partners SET status = 'suspended' WHERE id = :id"),
            {"id": parties.partner["id"]},
        )
    response = await client.get("/shipments", headers=bearer(key["secret"]))
    assert_problem(response, 403, "partner_suspended")


async def test_a_pending_partners_key_sees_no_shipment(
    manual_client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Approval decides what a partner sees, whichever credential it sends."""
    client = manual_client
    partner, headers = await account_with_token(
        client, "partner", serviceable_zip_codes=["02139"], max_handling_capacity=5
    )
    key = await create_key(client, "partner", headers)
    listed = await client.get("/shipments", headers=bearer(key["secret"]))
    assert listed.status_code == 200
    assert listed.json()["items"] == []
    async with db_engine.begin() as connection:
        await connection.execute(
            text("UPDATE partners SET status = 'suspended' WHERE id = :id"), {"id": partner["id"]}
        )
    assert_problem(
        await client.get("/shipments", headers=bearer(key["secret"])), 403, "partner_suspended"
    )


async def test_a_deleted_key_is_refused_at_once_by_every_replica(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Keys are checked in PostgreSQL on every request: no replica holds one in a cache."""
    _, headers = await account_with_token(client, "seller")
    key = await create_key(client, "seller", headers)
    async with running_client(create_app(settings)) as other_replica:
        for replica in (client, other_replica):
            response = await replica.get("/shipments", headers=bearer(key["secret"]))
            assert response.status_code == 200
        deleted = await client.delete(f"/seller/api-keys/{key['id']}", headers=headers)
        assert deleted.status_code == 204
        for replica in (other_replica, client):
            response = await replica.get("/shipments", headers=bearer(key["secret"]))
            assert_problem(response, 401, "invalid_token")
