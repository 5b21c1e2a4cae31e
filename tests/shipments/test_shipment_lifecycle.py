"""Shipments through the API: create, read, list, cancel, tags and partner reports."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from backend.shipments.service import TRACKING_ALPHABET
from tests.assertions import assert_problem
from tests.conftest import count_rows
from tests.factories import account_with_token
from tests.shipments.factories import (
    DESTINATION_ZIP,
    active_shipments,
    bring_to,
    create_shipment,
    get_shipment,
    make_parties,
    patch_shipment,
    shipment_body,
)

SHIPMENT_FIELDS = [
    "id",
    "tracking_number",
    "status",
    "content",
    "weight_kg",
    "destination",
    "recipient",
    "tags",
    "reference",
    "seller_id",
    "partner",
    "estimated_delivery",
    "version",
    "created_at",
    "updated_at",
    "tracking_url",
    "recipient_redacted",
    "review",
    "livemode",
    "attempts",
    "timeline",
]
STORED_TABLES = ("shipments", "shipment_events", "shipment_tags", "tags", "outbox_messages")


def encode_cursor_text(raw: str) -> str:
    """A cursor as the API encodes one, around any text."""
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def stored_counts(db_engine: AsyncEngine) -> dict[str, int]:
    return {table: await count_rows(db_engine, table) for table in STORED_TABLES}


def parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    assert moment.tzinfo is not None, f"{value} has no offset"
    return moment


# --- create ------------------------------------------------------------------------------------


async def test_create_returns_the_whole_shipment(
    client: httpx.AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    assert await active_shipments(client, parties.partner_headers) == 0
    body = shipment_body(
        tags=["Gift", "books", "gift", " BOOKS "],
        recipient={"name": "Grace", "email": "Grace@Example.com", "phone": "+1 617 555 0100"},
    )
    before = datetime.now(UTC)
    response = await client.post("/shipments", json=body, headers=parties.seller_headers)
    after = datetime.now(UTC)

    assert response.status_code == 201, response.text
    shipment = response.json()
    assert set(shipment) == {*SHIPMENT_FIELDS}
    assert response.headers["location"] == f"/shipments/{shipment['id']}"
    assert response.headers["etag"] == '"1"'
    assert shipment["review"] is None  # until the recipient rates the delivery
    assert shipment["recipient_redacted"] is False  # sellers always see their recipients
    number = shipment["tracking_number"]
    assert len(number) == 14
    assert set(number) <= set(TRACKING_ALPHABET)
    assert {key: shipment[key] for key in (*body, "status", "version", "seller_id", "partner")} == {
        **body,
        "recipient": {**body["recipient"], "email": "grace@example.com"},
        "tags": ["books", "gift"],
        "status": "placed",
        "version": 1,
        "seller_id": parties.seller["id"],
        "partner": {"id": parties.partner["id"], "name": parties.partner["name"]},
    }
    assert shipment["tracking_url"] == f"{settings.public_base_url}/t/{number}"
    transit = timedelta(days=settings.default_transit_days)
    eta = parse_time(shipment["estimated_delivery"])
    assert before + transit - timedelta(seconds=1) <= eta <= after + transit + timedelta(seconds=1)
    assert before - timedelta(seconds=1) <= parse_time(shipment["created_at"]) <= after
    assert parse_time(shipment["updated_at"]) == parse_time(shipment["created_at"])
    [event] = shipment["timeline"]
    assert (event["sequence"], event["status"], event["location_zip"]) == (1, "placed", None)
    assert abs(parse_time(event["created_at"]) - eta + transit) < timedelta(seconds=5)

    assert await active_shipments(client, parties.partner_headers) == 1
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == shipment
    assert await count_rows(db_engine, "shipment_tags") == 2


def _raw(**overrides: Any) -> str:
    return json.dumps(shipment_body(**overrides))


BAD_BODIES: dict[str, str] = {
    "weight NaN": _raw(weight_kg=1.5).replace("1.5", "NaN"),
    "weight Infinity": _raw(weight_kg=1.5).replace("1.5", "Infinity"),
    "weight -Infinity": _raw(weight_kg=1.5).replace("1.5", "-Infinity"),
    "weight 1e400": _raw(weight_kg=1.5).replace("1.5", "1e400"),
    "weight 0": _raw(weight_kg=0),
    "weight -1": _raw(weight_kg=-1),
    "weight 100.01": _raw(weight_kg=100.01),
    "weight string": _raw(weight_kg="heavy"),
    "weight numeric string": _raw(weight_kg="5"),
    "weight boolean": _raw(weight_kg=True),
    "content empty": _raw(content=""),
    "content 201 chars": _raw(content="x" * 201),
    "content NUL": _raw(content="books\u0000"),
    "11 tags": _raw(tags=[f"tag-{i}" for i in range(11)]),
    "tag with spaces": _raw(tags=["two words"]),
    "unknown field": _raw(colour="blue"),
    "status": _raw(status="delivered"),
    "id": _raw(id="3d0c8a8e-2f7b-4f57-9d6c-0f3c1b2a4e51"),
    "seller_id": _raw(seller_id="0b6f1e9e-5d43-4c1e-9a51-3f8e2f7f9a10"),
    "partner_id": _raw(partner_id="7c2d7a43-1f0b-4d8e-8a3a-52d1c0b9e6f4"),
    "version": _raw(version=7),
    "tracking_number": _raw(tracking_number="7KQ2M9XHR4TBWC"),
    "missing recipient email": _raw(recipient={"name": "Grace Hopper"}),
    "bad recipient email": _raw(recipient={"name": "Grace", "email": "not-an-email"}),
    "not an object": "[1, 2]",
}


@pytest.mark.parametrize("raw", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_create_rejects_bad_input_and_stores_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, raw: str
) -> None:
    parties = await make_parties(client)
    await create_shipment(client, parties.seller_headers)
    counts = await stored_counts(db_engine)
    headers = {**parties.seller_headers, "Content-Type": "application/json"}

    response = await client.post("/shipments", content=raw.encode(), headers=headers)

    problem = assert_problem(response, 422, "validation_failed")
    assert problem["errors"]
    assert await stored_counts(db_engine) == counts
    assert await active_shipments(client, parties.partner_headers) == 1


async def test_partner_cannot_create(client: httpx.AsyncClient, db_engine: AsyncEngine) -> None:
    parties = await make_parties(client)
    response = await client.post(
        "/shipments", json=shipment_body(), headers=parties.partner_headers
    )
    assert_problem(response, 403, "wrong_account_kind")
    assert await count_rows(db_engine, "shipments") == 0


@pytest.mark.parametrize("reason", ["zip not served", "partner full"])
async def test_no_partner_available_stores_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, reason: str
) -> None:
    parties = await make_parties(client, max_handling_capacity=1)
    await create_shipment(client, parties.seller_headers)
    counts = await stored_counts(db_engine)
    zip_code = "99999" if reason == "zip not served" else DESTINATION_ZIP
    body = shipment_body(destination={"zip_code": zip_code}, tags=["brand-new"])

    response = await client.post("/shipments", json=body, headers=parties.seller_headers)

    assert_problem(response, 409, "no_partner_available")
    assert await stored_counts(db_engine) == counts
    assert await active_shipments(client, parties.partner_headers) == 1


# --- reading and listing -----------------------------------------------------------------------


async def test_owner_and_assigned_partner_see_it(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    for headers in (parties.seller_headers, parties.partner_headers):
        assert await get_shipment(client, headers, shipment["id"]) == shipment
        listed = await client.get("/shipments", headers=headers)
        assert listed.status_code == 200
        assert listed.json() == {"items": [shipment], "next_cursor": None}


Call = Callable[[httpx.AsyncClient, str, dict[str, str]], Awaitable[httpx.Response]]
OPERATIONS: dict[str, tuple[str, Call]] = {
    "get": ("seller", lambda c, i, h: c.get(f"/shipments/{i}", headers=h)),
    "get-as-partner": ("partner", lambda c, i, h: c.get(f"/shipments/{i}", headers=h)),
    "patch": ("partner", lambda c, i, h: c.patch(f"/shipments/{i}", json={"note": "x"}, headers=h)),
    "cancel": ("seller", lambda c, i, h: c.post(f"/shipments/{i}/cancel", headers=h)),
    "tags": ("seller", lambda c, i, h: c.put(f"/shipments/{i}/tags", json={"tags": []}, headers=h)),
}


@pytest.mark.parametrize("operation", OPERATIONS.keys())
async def test_someone_elses_shipment_is_404(client: httpx.AsyncClient, operation: str) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    kind, call = OPERATIONS[operation]
    extra = {"serviceable_zip_codes": [DESTINATION_ZIP]} if kind == "partner" else {}
    _, stranger = await account_with_token(client, kind, **extra)

    assert_problem(await call(client, shipment["id"], stranger), 404, "shipment_not_found")
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == shipment


@pytest.mark.parametrize("operation", OPERATIONS.keys())
async def test_non_uuid_id_is_422(client: httpx.AsyncClient, operation: str) -> None:
    parties = await make_parties(client)
    kind, call = OPERATIONS[operation]
    headers = parties.seller_headers if kind == "seller" else parties.partner_headers
    assert_problem(await call(client, "not-a-uuid", headers), 422, "validation_failed")


async def test_list_pages_newest_first_with_cursor(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    created = [(await create_shipment(client, parties.seller_headers))["id"] for _ in range(5)]
    _, other_seller = await account_with_token(client, "seller")

    for headers in (parties.seller_headers, parties.partner_headers):
        seen: list[str] = []
        sizes: list[int] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            response = await client.get("/shipments", params=params, headers=headers)
            assert response.status_code == 200, response.text
            page = response.json()
            sizes.append(len(page["items"]))
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sizes == [2, 2, 1]
        assert seen == created[::-1]

    empty = await client.get("/shipments", headers=other_seller)
    assert empty.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": 0}, "validation_failed"),
        ({"limit": 101}, "validation_failed"),
        ({"limit": "ten"}, "validation_failed"),
        ({"status": "lost"}, "validation_failed"),
        ({"cursor": "garbage"}, "invalid_cursor"),
        ({"cursor": "bm90fGF8dXVpZA"}, "invalid_cursor"),  # "not|a|uuid"
        ({"cursor": "MjAyNi0wMS0wMXwxMjM"}, "invalid_cursor"),  # "2026-01-01|123"
        # Timestamps at the ends of the calendar, whose offset would overflow once in UTC.
        (
            {"cursor": encode_cursor_text(f"0001-01-01T00:00:00+14:00|{uuid.UUID(int=1)}")},
            "invalid_cursor",
        ),
        (
            {"cursor": encode_cursor_text(f"9999-12-31T23:59:59-14:00|{uuid.UUID(int=1)}")},
            "invalid_cursor",
        ),
    ],
)
async def test_list_rejects_bad_parameters(
    client: httpx.AsyncClient, params: dict[str, str | int], code: str
) -> None:
    parties = await make_parties(client)
    response = await client.get("/shipments", params=params, headers=parties.seller_headers)
    assert_problem(response, 422, code)


async def test_list_accepts_limit_bounds_and_filters(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    gift = await create_shipment(client, parties.seller_headers, tags=["gift"])
    moving = await create_shipment(client, parties.seller_headers, tags=["fragile"])
    await bring_to(client, db_engine, parties, moving["id"], "in_transit")

    async def ids(**params: str | int) -> list[str]:
        response = await client.get("/shipments", params=params, headers=parties.seller_headers)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await ids(limit=1) == [moving["id"]]
    assert await ids(limit=100) == [moving["id"], gift["id"]]
    assert await ids(status="placed") == [gift["id"]]
    assert await ids(status="in_transit") == [moving["id"]]
    assert await ids(status="delivered") == []
    assert await ids(tag="gift") == [gift["id"]]
    assert await ids(tag="GIFT") == [gift["id"]]
    assert await ids(tag="fragile", status="placed") == []
    assert await ids(tag="unused") == []


async def test_tag_filtered_lists_page_show_every_tag_and_follow_replaced_tags(
    client: httpx.AsyncClient,
) -> None:
    parties = await make_parties(client, max_handling_capacity=10)
    created = [
        await create_shipment(client, parties.seller_headers, tags=["gift", f"n{number}"])
        for number in range(5)
    ]
    untagged = await create_shipment(client, parties.seller_headers, tags=[])
    other = await make_parties(client)
    await create_shipment(client, other.seller_headers, tags=["gift"])
    newest_first = [shipment["id"] for shipment in reversed(created)]

    async def pages(headers: dict[str, str], **params: str) -> list[list[dict[str, Any]]]:
        found: list[list[dict[str, Any]]] = []
        cursor: str | None = None
        while True:
            query = {**params, "limit": "2", **({"cursor": cursor} if cursor else {})}
            response = await client.get("/shipments", params=query, headers=headers)
            assert response.status_code == 200, response.text
            found.append(response.json()["items"])
            cursor = response.json()["next_cursor"]
            if cursor is None:
                return found

    for headers in (parties.seller_headers, parties.partner_headers):
        gift_pages = await pages(headers, tag="gift")
        assert [len(page) for page in gift_pages] == [2, 2, 1]
        items = [item for page in gift_pages for item in page]
        assert [item["id"] for item in items] == newest_first
        # The filter selects shipments; each still shows all its tags.
        assert [item["tags"] for item in items] == [
            ["gift", f"n{number}"] for number in reversed(range(5))
        ]
        assert await pages(headers, tag="gift", status="placed") == gift_pages
        assert await pages(headers, tag="gift", status="delivered") == [[]]

    url = f"/shipments/{created[0]['id']}/tags"
    await client.put(url, json={"tags": ["n0"]}, headers=parties.seller_headers)
    url = f"/shipments/{untagged['id']}/tags"
    await client.put(url, json={"tags": ["gift"]}, headers=parties.seller_headers)
    for headers in (parties.seller_headers, parties.partner_headers):
        items = [item for page in await pages(headers, tag="gift") for item in page]
        assert [item["id"] for item in items] == [untagged["id"], *newest_first[:4]]
        assert [item["id"] for page in await pages(headers, tag="n0") for item in page] == [
            created[0]["id"]
        ]


# --- cancel and tags ---------------------------------------------------------------------------


async def test_seller_cancels_a_placed_shipment(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    assert await active_shipments(client, parties.partner_headers) == 1

    url = f"/shipments/{shipment['id']}/cancel"
    response = await client.post(url, headers=parties.seller_headers)

    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"'
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["version"] == 2
    assert [(e["sequence"], e["status"]) for e in cancelled["timeline"]] == [
        (1, "placed"),
        (2, "cancelled"),
    ]
    assert await get_shipment(client, parties.partner_headers, shipment["id"]) == cancelled
    assert await active_shipments(client, parties.partner_headers) == 0

    again = await client.post(url, headers=parties.seller_headers)
    assert assert_problem(again, 409, "invalid_transition")["current_status"] == "cancelled"
    assert await active_shipments(client, parties.partner_headers) == 0
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == cancelled


async def test_cannot_cancel_after_pickup_or_as_partner(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    url = f"/shipments/{shipment['id']}/cancel"
    assert_problem(
        await client.post(url, headers=parties.partner_headers), 403, "wrong_account_kind"
    )

    moving = await bring_to(client, db_engine, parties, shipment["id"], "in_transit")
    problem = assert_problem(
        await client.post(url, headers=parties.seller_headers), 409, "invalid_transition"
    )
    assert problem["current_status"] == "in_transit"
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == moving
    assert await active_shipments(client, parties.partner_headers) == 1


async def test_put_tags_replaces_them(client: httpx.AsyncClient, db_engine: AsyncEngine) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers, tags=["books", "gift"])
    url = f"/shipments/{shipment['id']}/tags"

    response = await client.put(
        url, json={"tags": ["Urgent", "fragile", "urgent"]}, headers=parties.seller_headers
    )

    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"'
    tagged = response.json()
    assert tagged["tags"] == ["fragile", "urgent"]
    assert tagged["version"] == 2
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == tagged
    assert await count_rows(db_engine, "shipment_tags") == 2

    too_many = {"tags": [f"t{i}" for i in range(11)]}
    assert_problem(
        await client.put(url, json=too_many, headers=parties.seller_headers),
        422,
        "validation_failed",
    )
    as_partner = await client.put(url, json={"tags": ["x"]}, headers=parties.partner_headers)
    assert_problem(as_partner, 403, "wrong_account_kind")
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == tagged

    cleared = await client.put(url, json={"tags": []}, headers=parties.seller_headers)
    assert cleared.json()["tags"] == []
    assert await count_rows(db_engine, "shipment_tags") == 0


# --- partner reports ---------------------------------------------------------------------------


async def test_partner_reports_status_location_note_and_eta(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    sid = shipment["id"]

    moved = await patch_shipment(
        client, parties.partner_headers, sid, status="in_transit", location_zip="02110", note="Hub"
    )
    assert moved.status_code == 200, moved.text
    assert moved.headers["etag"] == '"2"'
    assert moved.json()["timeline"][-1] == {
        **moved.json()["timeline"][-1],
        "sequence": 2,
        "status": "in_transit",
        "location_zip": "02110",
        "description": "Hub",
    }

    noted = await patch_shipment(client, parties.partner_headers, sid, note="Sorted at depot")
    assert noted.status_code == 200, noted.text
    last = noted.json()["timeline"][-1]
    assert (last["sequence"], last["status"], last["description"]) == (
        3,
        "in_transit",
        "Sorted at depot",
    )
    assert noted.json()["status"] == "in_transit"

    eta = (datetime.now(UTC) + timedelta(days=9)).replace(microsecond=0)
    revised = await patch_shipment(
        client, parties.partner_headers, sid, estimated_delivery=eta.astimezone().isoformat()
    )
    assert revised.status_code == 200, revised.text
    assert parse_time(revised.json()["estimated_delivery"]) == eta
    assert revised.json()["version"] == 4
    assert await get_shipment(client, parties.seller_headers, sid) == revised.json()
