"""Sign-up of sellers and partners: what is returned, what is stored, what is refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from tests.assertions import assert_problem
from tests.conftest import count_rows
from tests.factories import partner_body, seller_body

KINDS = ["seller", "partner"]
TABLES = {"seller": "sellers", "partner": "partners"}


def body_for(kind: str, **overrides: Any) -> dict[str, Any]:
    return seller_body(**overrides) if kind == "seller" else partner_body(**overrides)


async def stored_column(engine: AsyncEngine, table: str, column: str) -> list[Any]:
    async with engine.connect() as connection:
        query = text(f'SELECT "{column}" FROM "{table}"')  # noqa: S608 - names from tests
        return list((await connection.execute(query)).scalars())


async def test_seller_signup_returns_201_with_the_account_and_no_password(
    client: httpx.AsyncClient,
) -> None:
    body = seller_body(name="Acme Books", zip_code="02139", address="1 Main St")
    response = await client.post("/seller/signup", json=body)
    assert response.status_code == 201
    account = response.json()
    assert set(account) == {
        "id",
        "name",
        "email",
        "zip_code",
        "address",
        "email_verified_at",
        "created_at",
    }
    assert account["email_verified_at"] is None  # until the link in the sign-up email is used
    assert account["name"] == "Acme Books"
    assert account["email"] == body["email"]
    assert account["zip_code"] == "02139"
    assert account["address"] == "1 Main St"
    assert body["password"] not in response.text
    assert response.headers["x-request-id"]
    assert float(response.headers["x-process-time"]) >= 0


async def test_partner_signup_returns_201_with_the_account_and_no_password(
    client: httpx.AsyncClient,
) -> None:
    body = partner_body(serviceable_zip_codes=["02139", "10001"], max_handling_capacity=7)
    response = await client.post("/partner/signup", json=body)
    assert response.status_code == 201
    account = response.json()
    assert "password" not in account
    assert "password_hash" not in account
    assert account["email"] == body["email"]
    assert account["serviceable_zip_codes"] == ["02139", "10001"]
    assert account["max_handling_capacity"] == 7
    assert body["password"] not in response.text


@pytest.mark.parametrize("kind", KINDS)
async def test_signup_stores_the_email_lower_case_and_a_bcrypt_hash(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    response = await client.post(f"/{kind}/signup", json=body_for(kind, email="Ada.L@Example.COM"))
    assert response.status_code == 201
    assert response.json()["email"] == "ada.l@example.com"
    assert await stored_column(db_engine, TABLES[kind], "email") == ["ada.l@example.com"]
    [password_hash] = await stored_column(db_engine, TABLES[kind], "password_hash")
    assert password_hash.startswith("$2")


@pytest.mark.parametrize("kind", KINDS)
async def test_signup_with_an_email_taken_in_another_letter_case_is_409(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    first = await client.post(f"/{kind}/signup", json=body_for(kind, email="dup@example.com"))
    assert first.status_code == 201
    second = await client.post(f"/{kind}/signup", json=body_for(kind, email="DUP@Example.com"))
    assert_problem(second, 409, "email_taken")
    assert await count_rows(db_engine, TABLES[kind]) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_signups_with_one_email_store_one_account_and_409_the_rest(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    emails = ["race@example.com", "RACE@example.com", "Race@Example.com", "race@EXAMPLE.COM"]
    responses = await asyncio.gather(
        *(client.post(f"/{kind}/signup", json=body_for(kind, email=email)) for email in emails)
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201, 409, 409, 409]
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "email_taken")
    assert await count_rows(db_engine, TABLES[kind]) == 1


async def test_a_body_over_64_kib_is_413_and_stores_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    response = await client.post("/seller/signup", json=seller_body(address="x" * 70_000))
    assert_problem(response, 413, "payload_too_large")
    assert await count_rows(db_engine, "sellers") == 0


async def test_the_same_email_can_sign_up_once_as_seller_and_once_as_partner(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    seller = await client.post("/seller/signup", json=seller_body(email="both@example.com"))
    partner = await client.post("/partner/signup", json=partner_body(email="both@example.com"))
    assert seller.status_code == 201
    assert partner.status_code == 201
    assert await count_rows(db_engine, "sellers") == 1
    assert await count_rows(db_engine, "partners") == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_signup_accepts_a_password_of_exactly_72_utf8_bytes(
    client: httpx.AsyncClient, kind: str
) -> None:
    password = "é" * 30 + "x" * 12  # 60 + 12 bytes
    assert len(password.encode()) == 72
    response = await client.post(f"/{kind}/signup", json=body_for(kind, password=password))
    assert response.status_code == 201
    login = await client.post(
        f"/{kind}/token", data={"username": response.json()["email"], "password": password}
    )
    assert login.status_code == 200


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "password",
    ["x" * 7, "x" * 73, "€" * 25, "é" * 36 + "x"],
    ids=["7-bytes", "73-bytes", "25-euro-signs-75-bytes", "73-bytes-multibyte"],
)
async def test_signup_refuses_a_password_outside_8_to_72_bytes(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str, password: str
) -> None:
    response = await client.post(f"/{kind}/signup", json=body_for(kind, password=password))
    problem = assert_problem(response, 422, "validation_failed")
    assert ["body", "password"] in [issue["loc"][:2] for issue in problem["errors"]]
    assert await count_rows(db_engine, TABLES[kind]) == 0


@pytest.mark.parametrize(
    ("sent", "stored"),
    [("01234", "01234"), (" sw1a  1aa ", "SW1A 1AA"), ("k1a-0b1", "K1A-0B1")],
)
async def test_seller_zip_code_is_normalized_and_keeps_leading_zeros(
    client: httpx.AsyncClient, db_engine: AsyncEngine, sent: str, stored: str
) -> None:
    response = await client.post("/seller/signup", json=seller_body(zip_code=sent))
    assert response.status_code == 201
    assert response.json()["zip_code"] == stored
    assert await stored_column(db_engine, "sellers", "zip_code") == [stored]


@pytest.mark.parametrize("zip_code", [1234, "", "   ", "12$45", "A" * 11, "02139\x00"])
async def test_seller_signup_refuses_an_invalid_zip_code(
    client: httpx.AsyncClient, db_engine: AsyncEngine, zip_code: object
) -> None:
    response = await client.post("/seller/signup", json=seller_body(zip_code=zip_code))
    assert_problem(response, 422, "validation_failed")
    assert await count_rows(db_engine, "sellers") == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "extra",
    [
        {"nickname": "ada"},
        {"id": "7d1c1f5e-55f4-4d0a-a9a8-3a8b5e1f0c11"},
        {"created_at": "2020-01-01T00:00:00Z"},
        {"password_hash": "$2b$04$abcdefghijklmnopqrstuv"},
    ],
    ids=["unknown", "id", "created_at", "password_hash"],
)
async def test_signup_refuses_unknown_and_server_owned_fields(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str, extra: dict[str, str]
) -> None:
    response = await client.post(f"/{kind}/signup", json=body_for(kind, **extra))
    problem = assert_problem(response, 422, "validation_failed")
    [field] = extra
    assert ["body", field] in [issue["loc"] for issue in problem["errors"]]
    assert await count_rows(db_engine, TABLES[kind]) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("missing", ["name", "email", "password"])
async def test_signup_refuses_a_body_missing_a_required_field(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str, missing: str
) -> None:
    body = body_for(kind)
    del body[missing]
    response = await client.post(f"/{kind}/signup", json=body)
    assert_problem(response, 422, "validation_failed")
    assert await count_rows(db_engine, TABLES[kind]) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "overrides",
    [
        {"email": "not-an-email"},
        {"name": ""},
        {"name": "x" * 101},
        {"name": "Ada\x00"},
        {"password": "valid pass\ud800"},
        {"address": "1 Main St\udfff"},
    ],
    ids=["bad-email", "empty-name", "long-name", "nul-in-name", "surrogate", "surrogate-2"],
)
async def test_signup_refuses_invalid_values_without_a_500(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str, overrides: dict[str, str]
) -> None:
    # ASCII-escaped JSON, so lone surrogates travel as `\udXXX` escapes.
    content = json.dumps(body_for(kind, **overrides)).encode()
    response = await client.post(
        f"/{kind}/signup", content=content, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 422, "validation_failed")
    assert await count_rows(db_engine, TABLES[kind]) == 0


async def test_partner_signup_deduplicates_zip_codes_after_normalizing(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    zips = ["02139", "sw1a 1aa", "02139", " SW1A  1AA", "10001"]
    response = await client.post("/partner/signup", json=partner_body(serviceable_zip_codes=zips))
    assert response.status_code == 201
    assert response.json()["serviceable_zip_codes"] == ["02139", "SW1A 1AA", "10001"]
    stored = await stored_column(db_engine, "partners", "serviceable_zip_codes")
    assert stored == [["02139", "SW1A 1AA", "10001"]]


@pytest.mark.parametrize(
    "overrides",
    [
        {"serviceable_zip_codes": []},
        {"serviceable_zip_codes": "02139"},
        {"serviceable_zip_codes": [2139]},
        {"max_handling_capacity": 0},
        {"max_handling_capacity": -1},
        {"max_handling_capacity": 10**30},
        {"max_handling_capacity": 2.5},
    ],
    ids=["no-zips", "zip-string", "zip-number", "capacity-0", "capacity-neg", "huge", "float"],
)
async def test_partner_signup_refuses_invalid_zip_lists_and_capacities(
    client: httpx.AsyncClient, db_engine: AsyncEngine, overrides: dict[str, object]
) -> None:
    response = await client.post("/partner/signup", json=partner_body(**overrides))
    assert_problem(response, 422, "validation_failed")
    assert await count_rows(db_engine, "partners") == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_signup_with_a_form_body_is_refused_and_stores_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    response = await client.post(f"/{kind}/signup", data={"name": "Ada"})
    assert response.status_code in (415, 422)
    assert response.headers["content-type"] == "application/problem+json"
    assert await count_rows(db_engine, TABLES[kind]) == 0


async def test_signup_echoes_the_client_request_id(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/seller/signup", json=seller_body(password="short"), headers={"X-Request-ID": "abc-123"}
    )
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["request_id"] == "abc-123"


async def test_signups_beyond_the_per_ip_limit_get_429_and_store_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    for index in range(settings.signups_per_ip):
        kind = KINDS[index % 2]
        assert (await client.post(f"/{kind}/signup", json=body_for(kind))).status_code == 201
    response = await client.post("/partner/signup", json=partner_body())
    assert_problem(response, 429, "rate_limited")
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert 0 < int(retry_after) <= settings.rate_limit_window_seconds
    stored = await count_rows(db_engine, "sellers") + await count_rows(db_engine, "partners")
    assert stored == settings.signups_per_ip
