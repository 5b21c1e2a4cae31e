"""The status machine of product.md §5, pair by pair from the partner's side, and the
recipient's delivery code that guards `out_for_delivery -> delivered`."""

from __future__ import annotations

import itertools
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.shipments.status import TERMINAL, ShipmentStatus, allowed_next
from tests.assertions import assert_problem
from tests.shipments.factories import (
    Parties,
    active_shipments,
    bring_to,
    create_shipment,
    delivery_code,
    delivery_code_messages,
    get_shipment,
    make_parties,
    patch_shipment,
    try_again_after_a_failed_attempt,
)

STATUSES = ["placed", "in_transit", "out_for_delivery", "delivered", "cancelled", "returned"]

# product.md §5, written out: what the assigned partner may report next. `placed -> cancelled`
# is the seller's alone (POST /shipments/{id}/cancel), so a partner's PATCH to it is refused.
PARTNER_TABLE: dict[str, set[str]] = {
    "placed": {"in_transit"},
    "in_transit": {"in_transit", "out_for_delivery", "returned"},
    "out_for_delivery": {"delivered", "in_transit", "returned"},
    "delivered": set(),
    "cancelled": set(),
    "returned": set(),
}
TERMINAL_STATES = {"delivered", "cancelled", "returned"}


def test_status_module_matches_the_table() -> None:
    assert [status.value for status in ShipmentStatus] == STATUSES
    assert {status.value for status in TERMINAL} == TERMINAL_STATES
    for current, expected in PARTNER_TABLE.items():
        allowed = [status.value for status in allowed_next(ShipmentStatus(current))]
        assert set(allowed) == expected, current
        assert len(allowed) == len(expected), f"duplicates in allowed_next({current})"
        assert (not allowed) == (current in TERMINAL_STATES)


PAIRS = list(itertools.product(STATUSES, STATUSES))


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{s}->{t}" for s, t in PAIRS])
async def test_partner_transition(
    client: httpx.AsyncClient, db_engine: AsyncEngine, source: str, target: str
) -> None:
    parties = await make_parties(client)
    created = await create_shipment(client, parties.seller_headers)
    sid = created["id"]
    before = await bring_to(client, db_engine, parties, sid, source)
    body: dict[str, Any] = {"status": target, "location_zip": "02110"}
    if target == "delivered":
        # The real code when there is one, so only the transition decides the answer.
        has_code = source == "out_for_delivery"
        body["verification_code"] = await delivery_code(db_engine, sid) if has_code else "123456"
    if (source, target) == ("out_for_delivery", "in_transit"):
        body["failure_reason"] = "recipient_unavailable"  # a failed attempt needs its reason

    response = await patch_shipment(client, parties.partner_headers, sid, **body)

    if target in PARTNER_TABLE[source]:
        assert response.status_code == 200, response.text
        after = response.json()
        assert after["status"] == target
        assert after["version"] == before["version"] + 1
        assert response.headers["etag"] == f'"{after["version"]}"'
        assert after["timeline"][:-1] == before["timeline"]
        last = after["timeline"][-1]
        assert (last["sequence"], last["status"], last["location_zip"]) == (
            len(before["timeline"]) + 1,
            target,
            "02110",
        )
        assert await get_shipment(client, parties.seller_headers, sid) == after
        return

    problem = assert_problem(response, 409, "invalid_transition")
    assert problem["current_status"] == source
    assert sorted(problem["allowed_next"]) == sorted(PARTNER_TABLE[source])
    after = await get_shipment(client, parties.seller_headers, sid)
    assert (after["status"], after["version"], len(after["timeline"])) == (
        source,
        before["version"],
        len(before["timeline"]),
    )
    assert after == before


@pytest.mark.parametrize("source", sorted(TERMINAL_STATES))
async def test_terminal_shipment_takes_no_note(
    client: httpx.AsyncClient, db_engine: AsyncEngine, source: str
) -> None:
    parties = await make_parties(client)
    created = await create_shipment(client, parties.seller_headers)
    before = await bring_to(client, db_engine, parties, created["id"], source)

    response = await patch_shipment(client, parties.partner_headers, created["id"], note="late")

    problem = assert_problem(response, 409, "invalid_transition")
    assert (problem["current_status"], problem["allowed_next"]) == (source, [])
    assert await get_shipment(client, parties.seller_headers, created["id"]) == before


@pytest.mark.parametrize("source", ["placed", "in_transit", "out_for_delivery"])
async def test_note_keeps_a_live_status(
    client: httpx.AsyncClient, db_engine: AsyncEngine, source: str
) -> None:
    parties = await make_parties(client)
    created = await create_shipment(client, parties.seller_headers)
    before = await bring_to(client, db_engine, parties, created["id"], source)

    response = await patch_shipment(client, parties.partner_headers, created["id"], note="Scan")

    assert response.status_code == 200, response.text
    after = response.json()
    assert (after["status"], after["version"]) == (source, before["version"] + 1)
    assert after["timeline"][-1]["status"] == source
    assert after["timeline"][-1]["description"] == "Scan"


# --- the rest of a partner's PATCH ----------------------------------------------------------


BAD_PATCHES: dict[str, dict[str, Any]] = {
    "empty": {},
    "code only": {"verification_code": "123456"},
    "naive eta": {"estimated_delivery": "2030-01-01T10:00:00"},
    "eta past 9999 in UTC": {"estimated_delivery": "9999-12-31T23:59:59-05:00"},
    "eta before year 1 in UTC": {"estimated_delivery": "0001-01-01T00:00:00+05:00"},
    "eta in the past": {"estimated_delivery": "2020-01-01T10:00:00Z"},
    "null status": {"status": None},
    "unknown status": {"status": "lost"},
    "NUL in note": {"note": "a\u0000b"},
    "server-owned version": {"note": "x", "version": 9},
}


@pytest.mark.parametrize("body", BAD_PATCHES.values(), ids=BAD_PATCHES.keys())
async def test_patch_rejects_bad_bodies(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    response = await patch_shipment(client, parties.partner_headers, shipment["id"], **body)
    assert_problem(response, 422, "validation_failed")
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == shipment


async def test_patch_if_match_and_account_kind(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    url = f"/shipments/{shipment['id']}"

    as_seller = await client.patch(url, json={"note": "x"}, headers=parties.seller_headers)
    assert_problem(as_seller, 403, "wrong_account_kind")

    fresh = await client.patch(
        url, json={"status": "in_transit"}, headers={**parties.partner_headers, "If-Match": '"1"'}
    )
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["version"] == 2

    stale = await client.patch(
        url, json={"note": "late"}, headers={**parties.partner_headers, "If-Match": "1"}
    )
    assert assert_problem(stale, 412, "version_mismatch")["current_version"] == 2
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == fresh.json()

    any_version = await client.patch(
        url, json={"note": "any"}, headers={**parties.partner_headers, "If-Match": "*"}
    )
    assert any_version.status_code == 200, any_version.text
    assert any_version.json()["version"] == 3


async def test_updates_that_keep_the_status_describe_themselves(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    eta = "2099-01-01T12:00:00+00:00"

    await patch_shipment(client, parties.partner_headers, shipment["id"], estimated_delivery=eta)
    await patch_shipment(client, parties.partner_headers, shipment["id"], location_zip="02110")

    timeline = (await get_shipment(client, parties.seller_headers, shipment["id"]))["timeline"]
    assert [event["description"] for event in timeline] == [
        "Shipment created",
        "New delivery estimate",
        "Location update",
    ]
    assert [event["status"] for event in timeline] == ["placed"] * 3


# --- delivery codes ---------------------------------------------------------------------------


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def assert_no_code(response: httpx.Response, code: str) -> None:
    """Neither a `verification_code` field nor the code itself anywhere in the body."""

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            assert "verification_code" not in value
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        else:
            assert value != code

    walk(response.json())


async def out_for_delivery(
    client: httpx.AsyncClient, db_engine: AsyncEngine, parties: Parties
) -> tuple[dict[str, Any], str]:
    shipment = await create_shipment(client, parties.seller_headers)
    await bring_to(client, db_engine, parties, shipment["id"], "out_for_delivery")
    return shipment, await delivery_code(db_engine, shipment["id"])


async def test_delivery_code_is_sent_and_redeemed(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment, code = await out_for_delivery(client, db_engine, parties)
    sid = shipment["id"]
    [message] = await delivery_code_messages(db_engine, sid)
    assert message["to"] == shipment["recipient"]["email"]
    assert re.fullmatch(r"[0-9]{6}", code)

    missing = await patch_shipment(client, parties.partner_headers, sid, status="delivered")
    assert_problem(missing, 422, "verification_code_required")
    wrong = await patch_shipment(
        client, parties.partner_headers, sid, status="delivered", verification_code=other_code(code)
    )
    assert_problem(wrong, 422, "invalid_verification_code")
    async with db_engine.connect() as connection:
        attempts = await connection.execute(
            text("SELECT delivery_code_attempts FROM shipments WHERE id = :id"), {"id": sid}
        )
        assert attempts.scalar_one() == 1
    current = await get_shipment(client, parties.partner_headers, sid)
    assert (current["status"], current["version"]) == ("out_for_delivery", 3)

    delivered = await patch_shipment(
        client, parties.partner_headers, sid, status="delivered", verification_code=code
    )
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["status"] == "delivered"
    assert delivered.json()["timeline"][-1]["status"] == "delivered"
    assert await active_shipments(client, parties.partner_headers) == 0
    for response in (missing, wrong, delivered):
        assert_no_code(response, code)
    for headers in (parties.seller_headers, parties.partner_headers):
        assert_no_code(await client.get(f"/shipments/{sid}", headers=headers), code)
        assert_no_code(await client.get("/shipments", headers=headers), code)


async def test_five_wrong_codes_burn_it(client: httpx.AsyncClient, db_engine: AsyncEngine) -> None:
    parties = await make_parties(client)
    shipment, code = await out_for_delivery(client, db_engine, parties)
    sid = shipment["id"]
    wrong = {"status": "delivered", "verification_code": other_code(code)}
    for _ in range(4):
        response = await patch_shipment(client, parties.partner_headers, sid, **wrong)
        assert_problem(response, 422, "invalid_verification_code")

    burned = await patch_shipment(client, parties.partner_headers, sid, **wrong)
    assert_problem(burned, 429, "verification_code_burned")
    assert int(burned.headers["retry-after"]) > 0
    right = await patch_shipment(
        client, parties.partner_headers, sid, status="delivered", verification_code=code
    )
    assert_problem(right, 429, "verification_code_burned")
    assert "retry-after" in right.headers
    current = await get_shipment(client, parties.seller_headers, sid)
    assert (current["status"], current["version"], len(current["timeline"])) == (
        "out_for_delivery",
        3,
        3,
    )
    assert await active_shipments(client, parties.partner_headers) == 1

    # A failed attempt and a new round out for delivery issue a fresh, working code.
    await try_again_after_a_failed_attempt(client, parties.partner_headers, sid)
    fresh = await delivery_code(db_engine, sid)
    delivered = await patch_shipment(
        client, parties.partner_headers, sid, status="delivered", verification_code=fresh
    )
    assert delivered.status_code == 200, delivered.text
    assert await active_shipments(client, parties.partner_headers) == 0


async def test_failed_attempt_issues_a_new_code(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment, first = await out_for_delivery(client, db_engine, parties)
    sid = shipment["id"]
    await try_again_after_a_failed_attempt(client, parties.partner_headers, sid)
    messages = await delivery_code_messages(db_engine, sid)
    assert len(messages) == 2
    second = await delivery_code(db_engine, sid)
    assert messages[-1]["verification_code"] == second

    if first != second:
        old = await patch_shipment(
            client, parties.partner_headers, sid, status="delivered", verification_code=first
        )
        assert_problem(old, 422, "invalid_verification_code")
    new = await patch_shipment(
        client, parties.partner_headers, sid, status="delivered", verification_code=second
    )
    assert new.status_code == 200, new.text
    assert new.json()["status"] == "delivered"
