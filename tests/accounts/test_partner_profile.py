"""PATCH /partner/me: partners change their served zip codes and capacity, and their name
while they are still pending approval."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.assertions import assert_problem
from tests.factories import account_with_token


async def stored_partner(engine: AsyncEngine, partner_id: str) -> dict[str, Any]:
    query = text(
        "SELECT name, email, serviceable_zip_codes, max_handling_capacity, updated_at"
        " FROM partners WHERE id = :id"
    )
    async with engine.connect() as connection:
        row = (await connection.execute(query, {"id": partner_id})).mappings().one()
    return dict(row)


async def partner_with_token(
    client: httpx.AsyncClient,
) -> tuple[dict[str, Any], dict[str, str]]:
    return await account_with_token(
        client,
        "partner",
        name="Speedy Couriers",
        serviceable_zip_codes=["02139", "02140"],
        max_handling_capacity=5,
    )


async def test_a_pending_partners_patch_changes_every_field_and_the_change_persists(
    manual_client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    client = manual_client
    partner, headers = await partner_with_token(client)
    assert partner["status"] == "pending"
    changes = {
        "name": "  Speedier Couriers ",
        "serviceable_zip_codes": ["10001", " sw1a  1aa", "10001", "SW1A 1AA"],
        "max_handling_capacity": 40,
    }
    response = await client.patch("/partner/me", json=changes, headers=headers)
    assert response.status_code == 200
    expected = {
        "name": "Speedier Couriers",
        "serviceable_zip_codes": ["10001", "SW1A 1AA"],
        "max_handling_capacity": 40,
    }
    assert response.json() == {**response.json(), **expected}
    again = await client.get("/partner/me", headers=headers)
    assert again.json() == {**again.json(), **expected}
    stored = await stored_partner(db_engine, partner["id"])
    assert stored == {**stored, **expected}


async def test_patch_leaves_fields_that_were_not_sent_unchanged(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    partner, headers = await partner_with_token(client)
    response = await client.patch("/partner/me", json={"max_handling_capacity": 9}, headers=headers)
    assert response.status_code == 200
    stored = await stored_partner(db_engine, partner["id"])
    assert stored["max_handling_capacity"] == 9
    assert stored["name"] == "Speedy Couriers"
    assert stored["serviceable_zip_codes"] == ["02139", "02140"]
    assert stored["email"] == partner["email"]


async def test_patch_with_only_zip_codes_keeps_name_and_capacity(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    partner, headers = await partner_with_token(client)
    response = await client.patch(
        "/partner/me", json={"serviceable_zip_codes": ["01234"]}, headers=headers
    )
    assert response.status_code == 200
    assert response.json()["serviceable_zip_codes"] == ["01234"]
    stored = await stored_partner(db_engine, partner["id"])
    assert stored["serviceable_zip_codes"] == ["01234"]
    assert (stored["name"], stored["max_handling_capacity"]) == ("Speedy Couriers", 5)


async def test_patch_with_an_empty_body_changes_nothing_visible(
    client: httpx.AsyncClient,
) -> None:
    partner, headers = await partner_with_token(client)
    response = await client.patch("/partner/me", json={}, headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == partner["name"]
    assert body["serviceable_zip_codes"] == partner["serviceable_zip_codes"]
    assert body["max_handling_capacity"] == partner["max_handling_capacity"]


@pytest.mark.parametrize(
    "changes",
    [
        {"max_handling_capacity": 0},
        {"max_handling_capacity": -3},
        {"max_handling_capacity": "ten"},
        {"max_handling_capacity": 10**30},
        {"name": None},
        {"serviceable_zip_codes": None},
        {"max_handling_capacity": None},
        {"name": ""},
        {"name": "x" * 101},
        {"name": "Bad\x00Name"},
        {"serviceable_zip_codes": []},
        {"serviceable_zip_codes": [2139]},
        {"serviceable_zip_codes": ["02139", "bad$zip"]},
        {"nickname": "fast"},
        {"email": "new@example.com"},
        {"password": "a new password"},
        {"id": "7d1c1f5e-55f4-4d0a-a9a8-3a8b5e1f0c11"},
        {"created_at": "2020-01-01T00:00:00Z"},
        {"name": "Valid Name", "max_handling_capacity": 0},
    ],
    ids=[
        "capacity-0",
        "capacity-negative",
        "capacity-text",
        "capacity-huge",
        "null-name",
        "null-zips",
        "null-capacity",
        "empty-name",
        "long-name",
        "nul-in-name",
        "no-zips",
        "zip-number",
        "bad-zip",
        "unknown-field",
        "email",
        "password",
        "id",
        "created_at",
        "valid-and-invalid-together",
    ],
)
async def test_an_invalid_patch_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, changes: dict[str, Any]
) -> None:
    partner, headers = await partner_with_token(client)
    before = await stored_partner(db_engine, partner["id"])
    response = await client.patch("/partner/me", json=changes, headers=headers)
    problem = assert_problem(response, 422, "validation_failed")
    assert problem["errors"]
    assert await stored_partner(db_engine, partner["id"]) == before


async def test_a_patch_with_a_lone_surrogate_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    partner, headers = await partner_with_token(client)
    before = await stored_partner(db_engine, partner["id"])
    content = json.dumps({"name": "Bad \ud800 name"}).encode()  # sent as a `\ud800` escape
    response = await client.patch(
        "/partner/me", content=content, headers={**headers, "Content-Type": "application/json"}
    )
    assert_problem(response, 422, "validation_failed")
    assert await stored_partner(db_engine, partner["id"]) == before


async def test_a_seller_token_cannot_patch_a_partner_profile(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    partner, _ = await partner_with_token(client)
    _, seller_headers = await account_with_token(client, "seller")
    before = await stored_partner(db_engine, partner["id"])
    response = await client.patch(
        "/partner/me", json={"max_handling_capacity": 99}, headers=seller_headers
    )
    assert_problem(response, 403, "wrong_account_kind")
    assert await stored_partner(db_engine, partner["id"]) == before


async def test_patch_without_a_token_is_401_and_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    partner, _ = await partner_with_token(client)
    before = await stored_partner(db_engine, partner["id"])
    response = await client.patch("/partner/me", json={"max_handling_capacity": 99})
    assert_problem(response, 401, "not_authenticated")
    assert response.headers["www-authenticate"] == "Bearer"
    assert await stored_partner(db_engine, partner["id"]) == before


async def test_a_revoked_token_cannot_patch(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    partner, headers = await partner_with_token(client)
    assert (await client.post("/partner/logout", headers=headers)).status_code == 204
    before = await stored_partner(db_engine, partner["id"])
    response = await client.patch(
        "/partner/me", json={"max_handling_capacity": 99}, headers=headers
    )
    assert_problem(response, 401, "invalid_token")
    assert await stored_partner(db_engine, partner["id"]) == before


async def test_a_form_encoded_patch_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    partner, headers = await partner_with_token(client)
    before = await stored_partner(db_engine, partner["id"])
    response = await client.patch(
        "/partner/me", data={"max_handling_capacity": "99"}, headers=headers
    )
    assert response.status_code in (415, 422)
    assert response.headers["content-type"] == "application/problem+json"
    assert await stored_partner(db_engine, partner["id"]) == before


async def test_one_partners_patch_does_not_touch_another_partner(
    manual_client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    client = manual_client
    _, headers = await partner_with_token(client)
    other, _ = await partner_with_token(client)
    before = await stored_partner(db_engine, other["id"])
    response = await client.patch(
        "/partner/me", json={"name": "Renamed", "max_handling_capacity": 1}, headers=headers
    )
    assert response.status_code == 200
    assert await stored_partner(db_engine, other["id"]) == before


async def test_an_approved_partner_cannot_rename_itself_and_nothing_changes(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    partner, headers = await partner_with_token(client)
    assert partner["status"] == "approved"  # the suite's settings approve at sign-up
    before = await stored_partner(db_engine, partner["id"])
    response = await client.patch(
        "/partner/me", json={"name": "DHL Express", "max_handling_capacity": 9}, headers=headers
    )
    assert_problem(response, 409, "partner_name_locked")
    # The capacity sent with it is not applied either: the request is refused as a whole.
    assert await stored_partner(db_engine, partner["id"]) == before


async def test_an_approved_partner_still_changes_zip_codes_and_capacity(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    partner, headers = await partner_with_token(client)
    # Sending the unchanged name back (a client that PATCHes the whole profile) is fine.
    changes = {
        "name": partner["name"],
        "serviceable_zip_codes": ["10001"],
        "max_handling_capacity": 7,
    }
    response = await client.patch("/partner/me", json=changes, headers=headers)
    assert response.status_code == 200
    stored = await stored_partner(db_engine, partner["id"])
    assert (stored["name"], stored["serviceable_zip_codes"], stored["max_handling_capacity"]) == (
        "Speedy Couriers",
        ["10001"],
        7,
    )
