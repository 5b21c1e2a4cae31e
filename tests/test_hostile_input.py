"""Hostile request bodies never cause a 500, never get echoed back and never store anything.

Every case sends raw bytes (not `json=`), so the body is exactly what an attacker would send:
NaN, infinities, NUL characters, lone surrogates, absurd nesting and sizes, broken encodings,
wrong content types and unknown fields. The answer must be a 4xx problem+json document.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from tests.conftest import count_rows
from tests.factories import (
    PASSWORD,
    account_with_token,
    partner_body,
    seller_body,
    sign_up,
)
from tests.hostile_corpus import (
    EMAIL_SLOT,
    EXTRA_FIELDS,
    HOSTILE_FORMS,
    JSON,
    PLACEHOLDER,
    PW,
    RAW_BODIES,
    Extra,
    Hostile,
    HostileForm,
    RawBody,
    assert_problem,
    form_body,
    number_cases,
    string_cases,
)


@dataclass(frozen=True)
class JsonRoute:
    name: str
    method: str
    path: str
    table: str
    needs_partner_token: bool = False

    def valid_body(self) -> dict[str, Any]:
        if self.name == "seller_signup":
            return seller_body()
        if self.name == "partner_signup":
            return partner_body()
        # No name: approved partners (the suite approves at sign-up) cannot change it; the
        # hostile name cases add one, and validation refuses them first.
        return {"serviceable_zip_codes": ["02139"], "max_handling_capacity": 7}


SELLER_SIGNUP = JsonRoute("seller_signup", "POST", "/seller/signup", "sellers")
PARTNER_SIGNUP = JsonRoute("partner_signup", "POST", "/partner/signup", "partners")
PARTNER_PATCH = JsonRoute("partner_patch", "PATCH", "/partner/me", "partners", True)
JSON_ROUTES = (SELLER_SIGNUP, PARTNER_SIGNUP, PARTNER_PATCH)


NAME_TOO_LONG = "N" * 101
NAME_HUGE = "H" * 20_000
LONG_EMAIL = "e" * 250 + "@example.com"
PASSWORD_73_BYTES = "p" * 73
PASSWORD_74_BYTES_37_CHARS = "\u00e9" * 37  # 37 characters, 74 bytes in UTF-8
TEN_THOUSAND_ZIPS = json.dumps(["1"] * 10_000)  # ~40 KB: under the body limit


def _length_cases(route: JsonRoute) -> list[Hostile]:
    cases = [
        Hostile("name_101", "name", json.dumps(NAME_TOO_LONG), forbidden=(NAME_TOO_LONG.encode(),)),
        Hostile("name_20000", "name", json.dumps(NAME_HUGE), forbidden=(b"H" * 200,)),
    ]
    if route is not PARTNER_PATCH:
        cases += [
            Hostile("email_262", "email", json.dumps(LONG_EMAIL), forbidden=(b"e" * 200,)),
            Hostile("password_73_bytes", "password", json.dumps(PASSWORD_73_BYTES)),
            Hostile(
                "password_74_bytes_37_chars",
                "password",
                json.dumps(PASSWORD_74_BYTES_37_CHARS),
                forbidden=(PASSWORD_74_BYTES_37_CHARS.encode(),),
            ),
        ]
    if route is SELLER_SIGNUP:
        cases.append(Hostile("zip_21", "zip_code", json.dumps("1" * 21)))
    else:
        cases += [
            Hostile("zip_21", "serviceable_zip_codes", json.dumps(["1" * 21])),
            Hostile("zips_10000", "serviceable_zip_codes", TEN_THOUSAND_ZIPS),
            Hostile("zips_empty", "serviceable_zip_codes", "[]"),
            Hostile("capacity_zero", "max_handling_capacity", "0"),
            Hostile("capacity_float", "max_handling_capacity", "2.5"),
            Hostile("capacity_string", "max_handling_capacity", '"lots"'),
        ]
    return cases


def _field_cases(route: JsonRoute) -> list[Hostile]:
    cases: list[Hostile] = []
    string_fields = ["name"]
    if route is not PARTNER_PATCH:
        string_fields += ["email", "password"]
    if route is SELLER_SIGNUP:
        string_fields.append("zip_code")
        # Sellers have no number field: numbers where text is expected must still be a 422.
        cases += number_cases("zip_code")
    else:
        cases += number_cases("max_handling_capacity")
        cases += [
            Hostile(f"zip_{case.id}", case.key, case.literal, case.statuses, case.forbidden)
            for case in string_cases("serviceable_zip_codes", as_list=True)
        ]
    for name in string_fields:
        cases += [
            Hostile(f"{name}_{case.id}", case.key, case.literal, case.statuses, case.forbidden)
            for case in string_cases(name)
        ]
    cases += _length_cases(route)
    return cases


FIELD_CASES = [
    pytest.param(route, case, id=f"{route.name}-{case.id}")
    for route in JSON_ROUTES
    for case in _field_cases(route)
]


@dataclass
class Target:
    """A route ready to be called, and what its stored state looked like beforehand."""

    route: JsonRoute
    headers: dict[str, str]
    snapshot: Any


async def _partner_row(engine: AsyncEngine, partner_id: str) -> tuple[Any, ...]:
    query = text(
        "SELECT name, email, serviceable_zip_codes, max_handling_capacity, password_hash, "
        "updated_at FROM partners WHERE id = :id"
    )
    async with engine.connect() as connection:
        row = (await connection.execute(query, {"id": partner_id})).one()
    return tuple(row)


async def _snapshot(engine: AsyncEngine, account_id: str | None) -> Any:
    counts = (await count_rows(engine, "sellers"), await count_rows(engine, "partners"))
    if account_id is None:
        return counts
    return counts, await _partner_row(engine, account_id)


async def _prepare(
    client: httpx.AsyncClient, engine: AsyncEngine, route: JsonRoute, content_type: str
) -> Target:
    headers = {"Content-Type": content_type}
    account_id: str | None = None
    if route.needs_partner_token:
        account, auth = await account_with_token(client, "partner")
        headers.update(auth)
        account_id = account["id"]
    return Target(route, headers, await _snapshot(engine, account_id))


async def _nothing_stored(engine: AsyncEngine, target: Target, account_id: str | None) -> None:
    assert await _snapshot(engine, account_id) == target.snapshot


def _body_with(route: JsonRoute, field_name: str, literal: str) -> bytes:
    body = route.valid_body()
    body[field_name] = PLACEHOLDER
    return json.dumps(body).replace(json.dumps(PLACEHOLDER), literal, 1).encode("utf-8")


async def _send(
    client: httpx.AsyncClient,
    route: JsonRoute,
    headers: dict[str, str],
    content: bytes,
) -> httpx.Response:
    return await client.request(route.method, route.path, content=content, headers=headers)


async def _own_partner_id(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.get("/partner/me", headers={"Authorization": headers["Authorization"]})
    assert response.status_code == 200
    partner_id: str = response.json()["id"]
    return partner_id


@pytest.mark.parametrize(("route", "case"), FIELD_CASES)
async def test_hostile_field_value_is_refused_without_echo_or_storage(
    client: httpx.AsyncClient, db_engine: AsyncEngine, route: JsonRoute, case: Hostile
) -> None:
    target = await _prepare(client, db_engine, route, JSON)
    partner_id = (
        await _own_partner_id(client, target.headers) if route.needs_partner_token else None
    )

    response = await _send(client, route, target.headers, _body_with(route, case.key, case.literal))

    assert_problem(response, case.statuses, forbidden=case.forbidden)
    await _nothing_stored(db_engine, target, partner_id)


@pytest.mark.parametrize("route", JSON_ROUTES, ids=[route.name for route in JSON_ROUTES])
@pytest.mark.parametrize("raw", RAW_BODIES, ids=[raw.id for raw in RAW_BODIES])
async def test_hostile_whole_body_is_refused_without_echo_or_storage(
    client: httpx.AsyncClient, db_engine: AsyncEngine, route: JsonRoute, raw: RawBody
) -> None:
    target = await _prepare(client, db_engine, route, raw.content_type)
    partner_id = (
        await _own_partner_id(client, target.headers) if route.needs_partner_token else None
    )
    content = raw.content if raw.content is not None else json.dumps(route.valid_body()).encode()

    response = await _send(client, route, target.headers, content)

    assert_problem(response, raw.statuses, code=raw.code, forbidden=raw.forbidden)
    await _nothing_stored(db_engine, target, partner_id)


@pytest.mark.parametrize("route", JSON_ROUTES, ids=[route.name for route in JSON_ROUTES])
@pytest.mark.parametrize("extra", EXTRA_FIELDS, ids=[extra.id for extra in EXTRA_FIELDS])
async def test_unknown_and_server_owned_fields_are_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine, route: JsonRoute, extra: Extra
) -> None:
    target = await _prepare(client, db_engine, route, JSON)
    partner_id = (
        await _own_partner_id(client, target.headers) if route.needs_partner_token else None
    )
    content = json.dumps({**route.valid_body(), **extra.fields}).encode()

    response = await _send(client, route, target.headers, content)

    body = assert_problem(
        response, frozenset({422}), code="validation_failed", forbidden=extra.forbidden
    )
    if extra.named_as_extra:
        assert any(issue["type"] == "extra_forbidden" for issue in body["errors"]), body
    await _nothing_stored(db_engine, target, partner_id)


async def test_valid_bodies_of_the_hostile_corpus_routes_are_accepted(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """The corpus is refused for what is hostile in it, not because the base bodies are bad."""
    for route in (SELLER_SIGNUP, PARTNER_SIGNUP):
        response = await client.post(
            route.path, content=json.dumps(route.valid_body()), headers={"Content-Type": JSON}
        )
        assert response.status_code == 201, response.text
    _, auth = await account_with_token(client, "partner")
    response = await client.patch(
        PARTNER_PATCH.path,
        content=json.dumps(PARTNER_PATCH.valid_body()),
        headers={"Content-Type": JSON, **auth},
    )
    assert response.status_code == 200, response.text
    assert response.json()["max_handling_capacity"] == 7
    assert await count_rows(db_engine, "sellers") == 1
    assert await count_rows(db_engine, "partners") == 2


# --- POST /seller/token (form) ---------------------------------------------------------------


@pytest.mark.parametrize("form", HOSTILE_FORMS, ids=[form.id for form in HOSTILE_FORMS])
async def test_hostile_login_form_is_refused_without_echo_or_token(
    client: httpx.AsyncClient, db_engine: AsyncEngine, form: HostileForm
) -> None:
    seller = await sign_up(client, "seller")
    content = form.content.replace(EMAIL_SLOT.encode(), seller["email"].encode())
    sellers_before = await count_rows(db_engine, "sellers")

    response = await client.post(
        "/seller/token", content=content, headers={"Content-Type": form.content_type}
    )

    assert_problem(response, form.statuses, forbidden=form.forbidden)
    assert "access_token" not in response.text
    assert await count_rows(db_engine, "sellers") == sellers_before
    # The real credentials still work: hostile attempts did not break the account.
    good = await client.post(
        "/seller/token", data={"username": seller["email"], "password": PASSWORD}
    )
    assert good.status_code == 200, good.text


# --- Body size limit -------------------------------------------------------------------------


def _padded_json(body: dict[str, Any], size: int) -> bytes:
    """A valid JSON document of exactly `size` bytes (the body followed by whitespace)."""
    encoded = json.dumps(body).encode()
    assert len(encoded) <= size
    return encoded + b" " * (size - len(encoded))


async def _chunks(payload: bytes, chunk_size: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(payload), chunk_size):
        yield payload[start : start + chunk_size]


LIMIT_ROUTES = [
    pytest.param("/seller/signup", "sellers", id="seller_signup"),
    pytest.param("/partner/signup", "partners", id="partner_signup"),
]


def _route_body(path: str) -> dict[str, Any]:
    return seller_body() if path.startswith("/seller") else partner_body()


@pytest.mark.parametrize(("path", "table"), LIMIT_ROUTES)
@pytest.mark.parametrize("streamed", [False, True], ids=["content_length", "chunked"])
@pytest.mark.parametrize("excess", [1, 1024 * 1024], ids=["one_byte_over", "one_mib_over"])
async def test_body_over_the_limit_is_refused_with_413(
    client: httpx.AsyncClient,
    db_engine: AsyncEngine,
    settings: Settings,
    path: str,
    table: str,
    streamed: bool,
    excess: int,
) -> None:
    payload = _padded_json(_route_body(path), settings.max_body_bytes + excess)
    content: bytes | AsyncIterator[bytes] = _chunks(payload) if streamed else payload

    response = await client.post(path, content=content, headers={"Content-Type": JSON})

    sent = response.request.headers
    if streamed:
        assert "content-length" not in sent
        assert sent["transfer-encoding"] == "chunked"
    else:
        assert int(sent["content-length"]) == len(payload)
    assert_problem(response, frozenset({413}), code="payload_too_large")
    assert await count_rows(db_engine, table) == 0


@pytest.mark.parametrize("streamed", [False, True], ids=["content_length", "chunked"])
async def test_oversized_login_form_is_refused_with_413(
    client: httpx.AsyncClient, settings: Settings, streamed: bool
) -> None:
    payload = form_body("a%40example.com", PW, "&scope=" + "s" * settings.max_body_bytes)
    content: bytes | AsyncIterator[bytes] = _chunks(payload) if streamed else payload
    response = await client.post(
        "/seller/token",
        content=content,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, frozenset({413}), code="payload_too_large")


async def test_oversized_body_to_unknown_path_is_still_a_problem(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.post(
        "/no/such/route",
        content=b"x" * (settings.max_body_bytes + 1),
        headers={"Content-Type": JSON},
    )
    assert_problem(response, frozenset({404, 413}))


@pytest.mark.parametrize(("path", "table"), LIMIT_ROUTES)
@pytest.mark.parametrize("streamed", [False, True], ids=["content_length", "chunked"])
@pytest.mark.parametrize("shortfall", [0, 1], ids=["exactly_the_limit", "one_byte_under"])
async def test_body_within_the_limit_is_accepted(
    client: httpx.AsyncClient,
    db_engine: AsyncEngine,
    settings: Settings,
    path: str,
    table: str,
    streamed: bool,
    shortfall: int,
) -> None:
    payload = _padded_json(_route_body(path), settings.max_body_bytes - shortfall)
    content: bytes | AsyncIterator[bytes] = _chunks(payload) if streamed else payload

    response = await client.post(path, content=content, headers={"Content-Type": JSON})

    assert response.status_code == 201, response.text
    assert await count_rows(db_engine, table) == 1
