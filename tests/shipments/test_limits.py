"""Abuse limits on shipments (product.md §10): wrong delivery codes per shipment across its codes
and per partner, shipments of unverified sellers, creates per seller per minute, timeline length.

Every refusal is a problem+json with a stable code and stores nothing; the caps hold under
simultaneous requests because PostgreSQL settles them under the rows they guard.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.main import create_app
from tests.assertions import assert_problem
from tests.conftest import count_rows, make_settings, running_client
from tests.factories import account_with_token, verify_email
from tests.shipments.factories import (
    Parties,
    active_shipments,
    create_shipment,
    delivery_code,
    delivery_code_messages,
    make_parties,
    patch_shipment,
    shipment_body,
)
from tests.shipments.test_concurrency import all_at_once, stored_events
from tests.shipments.test_status_transitions import other_code

DEFAULT_UNVERIFIED_LIMIT = 20
DEFAULT_FAILURES_PER_SHIPMENT = 10


async def limited_client(
    database_url: str, redis_url: str, **overrides: object
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app of its own whose limits are `overrides`."""
    app = create_app(make_settings(database_url, redis_url, **overrides))
    async with running_client(app) as http:
        yield http


async def stored_shipment(db_engine: AsyncEngine, shipment_id: str) -> dict[str, Any]:
    async with db_engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT status, delivery_code_failures, delivery_code_hash, last_sequence"
                " FROM shipments WHERE id = :id"
            ),
            {"id": uuid.UUID(shipment_id)},
        )
        return dict(result.one()._mapping)


# --- delivery codes ---------------------------------------------------------------------------


async def go_out(client: httpx.AsyncClient, parties: Parties, shipment_id: str) -> None:
    response = await patch_shipment(
        client, parties.partner_headers, shipment_id, status="out_for_delivery"
    )
    assert response.status_code == 200, response.text


async def guess(
    client: httpx.AsyncClient, parties: Parties, shipment_id: str, code: str
) -> httpx.Response:
    return await patch_shipment(
        client, parties.partner_headers, shipment_id, status="delivered", verification_code=code
    )


async def test_wrong_codes_are_capped_per_shipment_across_reissued_codes(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    sid = (await create_shipment(client, parties.seller_headers))["id"]
    assert (
        await patch_shipment(client, parties.partner_headers, sid, status="in_transit")
    ).is_success
    await go_out(client, parties, sid)
    first = await delivery_code(db_engine, sid)
    for _ in range(4):
        assert_problem(
            await guess(client, parties, sid, other_code(first)), 422, "invalid_verification_code"
        )
    assert_problem(
        await guess(client, parties, sid, other_code(first)), 429, "verification_code_burned"
    )

    # A failed attempt and a new round out: a fresh code, but only what is left of the budget.
    failed = await patch_shipment(
        client, parties.partner_headers, sid, status="in_transit", failure_reason="weather"
    )
    assert failed.status_code == 200, failed.text
    await go_out(client, parties, sid)
    second = await delivery_code(db_engine, sid)
    for tries_left in (4, 3, 2, 1):
        wrong = await guess(client, parties, sid, other_code(second))
        assert_problem(wrong, 422, "invalid_verification_code")
        assert f"{tries_left} tries left" in wrong.json()["detail"]
    locked = await guess(client, parties, sid, other_code(second))
    assert_problem(locked, 409, "delivery_locked")
    assert locked.json()["allowed_next"] == ["returned"]

    # Locked: not even the right code delivers it, and no new code can be issued.
    assert_problem(await guess(client, parties, sid, second), 409, "delivery_locked")
    failed_again = {"status": "in_transit", "failure_reason": "recipient_unavailable"}
    for body in (failed_again, {"note": "Trying again tomorrow"}):
        refused = await patch_shipment(client, parties.partner_headers, sid, **body)
        assert_problem(refused, 409, "delivery_locked")
    stored = await stored_shipment(db_engine, sid)
    assert stored["delivery_code_failures"] == DEFAULT_FAILURES_PER_SHIPMENT
    assert stored["delivery_code_hash"] is None
    assert stored["status"] == "out_for_delivery"
    assert len(await delivery_code_messages(db_engine, sid)) == 2

    # It can still go back to the sender, which frees the partner's slot.
    returned = await patch_shipment(client, parties.partner_headers, sid, status="returned")
    assert returned.status_code == 200, returned.text
    assert returned.json()["status"] == "returned"
    assert await active_shipments(client, parties.partner_headers) == 0


@pytest.fixture
async def slow_guesser(database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for http in limited_client(
        database_url, redis_url, delivery_code_guesses_per_partner_per_minute=2
    ):
        yield http


async def test_code_guesses_are_rate_limited_per_partner_and_right_codes_do_not_count(
    slow_guesser: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    client = slow_guesser
    parties = await make_parties(client)
    sids = [(await create_shipment(client, parties.seller_headers))["id"] for _ in range(3)]
    for sid in sids:
        assert (
            await patch_shipment(client, parties.partner_headers, sid, status="in_transit")
        ).is_success
        await go_out(client, parties, sid)
    right = await guess(client, parties, sids[0], await delivery_code(db_engine, sids[0]))
    assert right.status_code == 200, right.text

    # The right code above was given back: two wrong guesses still fit in the minute.
    code = await delivery_code(db_engine, sids[1])
    for _ in range(2):
        assert_problem(
            await guess(client, parties, sids[1], other_code(code)),
            422,
            "invalid_verification_code",
        )
    limited = await guess(client, parties, sids[2], await delivery_code(db_engine, sids[2]))

    assert_problem(limited, 429, "rate_limited")
    assert 0 < int(limited.headers["retry-after"]) <= 60
    # The refused guess never reached the shipment.
    assert (await stored_shipment(db_engine, sids[2]))["delivery_code_failures"] == 0
    assert (await stored_shipment(db_engine, sids[2]))["status"] == "out_for_delivery"
    # Another partner's budget is its own.
    others = await make_parties(client, serviceable_zip_codes=["10001"])
    other = await create_shipment(client, others.seller_headers, destination={"zip_code": "10001"})
    assert (
        await patch_shipment(client, others.partner_headers, other["id"], status="in_transit")
    ).is_success
    await go_out(client, others, other["id"])
    delivered = await guess(
        client, others, other["id"], await delivery_code(db_engine, other["id"])
    )
    assert delivered.status_code == 200, delivered.text


# --- unverified sellers -----------------------------------------------------------------------


async def test_an_unverified_seller_may_create_twenty_shipments_until_verified(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client, max_handling_capacity=50)
    for _ in range(DEFAULT_UNVERIFIED_LIMIT):
        await create_shipment(client, parties.seller_headers)

    refused = await client.post("/shipments", json=shipment_body(), headers=parties.seller_headers)

    assert_problem(refused, 403, "email_not_verified")
    assert await count_rows(db_engine, "shipments") == DEFAULT_UNVERIFIED_LIMIT
    assert await active_shipments(client, parties.partner_headers) == DEFAULT_UNVERIFIED_LIMIT
    # Cancelling does not give an unverified seller more: the cap is on shipments created.
    first = (await client.get("/shipments", headers=parties.seller_headers)).json()["items"][0]
    cancel = await client.post(f"/shipments/{first['id']}/cancel", headers=parties.seller_headers)
    assert cancel.status_code == 200, cancel.text
    again = await client.post("/shipments", json=shipment_body(), headers=parties.seller_headers)
    assert_problem(again, 403, "email_not_verified")

    await verify_email(client, db_engine, "seller", parties.seller["email"])
    await create_shipment(client, parties.seller_headers)
    assert await count_rows(db_engine, "shipments") == DEFAULT_UNVERIFIED_LIMIT + 1


async def test_simultaneous_creates_at_the_unverified_cap_let_exactly_one_through(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client, max_handling_capacity=50)
    for _ in range(DEFAULT_UNVERIFIED_LIMIT - 1):
        await create_shipment(client, parties.seller_headers)

    responses = await all_at_once(
        client.post("/shipments", json=shipment_body(), headers=parties.seller_headers)
        for _ in range(20)
    )

    assert Counter(r.status_code for r in responses) == {201: 1, 403: 19}
    for response in responses:
        if response.status_code == 403:
            assert_problem(response, 403, "email_not_verified")
    assert await count_rows(db_engine, "shipments") == DEFAULT_UNVERIFIED_LIMIT
    assert await count_rows(db_engine, "shipment_events") == DEFAULT_UNVERIFIED_LIMIT
    assert await active_shipments(client, parties.partner_headers) == DEFAULT_UNVERIFIED_LIMIT


async def test_an_idempotent_replay_is_not_another_shipment(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client, max_handling_capacity=50)
    for _ in range(DEFAULT_UNVERIFIED_LIMIT - 1):
        await create_shipment(client, parties.seller_headers)
    headers = {**parties.seller_headers, "Idempotency-Key": "last-one"}
    body = shipment_body()

    first = await client.post("/shipments", json=body, headers=headers)
    replay = await client.post("/shipments", json=body, headers=headers)

    assert first.status_code == replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert await count_rows(db_engine, "shipments") == DEFAULT_UNVERIFIED_LIMIT


# --- creates per minute -----------------------------------------------------------------------


@pytest.fixture
async def three_a_minute(database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for http in limited_client(database_url, redis_url, shipments_per_seller_per_minute=3):
        yield http


async def test_creates_are_rate_limited_per_seller(
    three_a_minute: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    client = three_a_minute
    parties = await make_parties(client, max_handling_capacity=50)
    responses = await all_at_once(
        client.post("/shipments", json=shipment_body(), headers=parties.seller_headers)
        for _ in range(8)
    )

    assert Counter(r.status_code for r in responses) == {201: 3, 429: 5}
    for response in responses:
        if response.status_code == 429:
            assert_problem(response, 429, "rate_limited")
            assert 0 < int(response.headers["retry-after"]) <= 60
    assert await count_rows(db_engine, "shipments") == 3
    assert await active_shipments(client, parties.partner_headers) == 3
    # Another seller has a minute of its own.
    _, other_headers = await account_with_token(client, "seller")
    await create_shipment(client, other_headers)


# --- timelines --------------------------------------------------------------------------------

SMALL_TIMELINE = 10


@pytest.fixture
async def short_timelines(database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for http in limited_client(
        database_url, redis_url, max_events_per_shipment=SMALL_TIMELINE
    ):
        yield http


async def note(client: httpx.AsyncClient, parties: Parties, sid: str, text: str) -> httpx.Response:
    return await patch_shipment(client, parties.partner_headers, sid, note=text)


async def test_a_full_timeline_refuses_notes_and_steps_but_takes_the_final_status(
    short_timelines: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    client = short_timelines
    parties = await make_parties(client)
    sid = (await create_shipment(client, parties.seller_headers))["id"]
    assert (
        await patch_shipment(client, parties.partner_headers, sid, status="in_transit")
    ).is_success
    for index in range(SMALL_TIMELINE - 3):
        assert (await note(client, parties, sid, f"Scan {index}")).status_code == 200

    # One place is left, kept for the final status.
    for body in (
        {"note": "One more"},
        {"status": "in_transit", "location_zip": "02110"},
        {"status": "out_for_delivery"},
    ):
        refused = await patch_shipment(client, parties.partner_headers, sid, **body)
        assert_problem(refused, 409, "timeline_full")
    assert len(await stored_events(db_engine, sid)) == SMALL_TIMELINE - 1

    returned = await patch_shipment(client, parties.partner_headers, sid, status="returned")
    assert returned.status_code == 200, returned.text
    assert len(returned.json()["timeline"]) == SMALL_TIMELINE
    assert (await stored_shipment(db_engine, sid))["last_sequence"] == SMALL_TIMELINE
    assert await active_shipments(client, parties.partner_headers) == 0


async def test_a_seller_can_cancel_a_shipment_whose_timeline_is_full(
    short_timelines: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    client = short_timelines
    parties = await make_parties(client)
    sid = (await create_shipment(client, parties.seller_headers))["id"]
    for index in range(SMALL_TIMELINE - 2):
        assert (await note(client, parties, sid, f"Waiting {index}")).status_code == 200
    assert_problem(await note(client, parties, sid, "Still waiting"), 409, "timeline_full")

    cancelled = await client.post(f"/shipments/{sid}/cancel", headers=parties.seller_headers)

    assert cancelled.status_code == 200, cancelled.text
    assert [event["status"] for event in cancelled.json()["timeline"]][-1] == "cancelled"
    assert len(await stored_events(db_engine, sid)) == SMALL_TIMELINE


async def test_simultaneous_notes_never_overfill_the_timeline(
    short_timelines: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    client = short_timelines
    parties = await make_parties(client)
    sid = (await create_shipment(client, parties.seller_headers))["id"]
    assert (
        await patch_shipment(client, parties.partner_headers, sid, status="in_transit")
    ).is_success

    responses = await all_at_once(
        note(client, parties, sid, f"Note {index}") for index in range(30)
    )

    accepted = SMALL_TIMELINE - 1 - 2
    assert Counter(r.status_code for r in responses) == {200: accepted, 409: 30 - accepted}
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "timeline_full")
    events = await stored_events(db_engine, sid)
    assert [sequence for sequence, _, _ in events] == list(range(1, SMALL_TIMELINE))
    returned = await patch_shipment(client, parties.partner_headers, sid, status="returned")
    assert returned.status_code == 200, returned.text
    assert len(await stored_events(db_engine, sid)) == SMALL_TIMELINE


async def test_the_default_timeline_holds_two_hundred_events(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    sid = (await create_shipment(client, parties.seller_headers))["id"]
    assert (
        await patch_shipment(client, parties.partner_headers, sid, status="in_transit")
    ).is_success
    for index in range(197):
        assert (await note(client, parties, sid, f"Scan {index}")).status_code == 200

    assert_problem(await note(client, parties, sid, "One too many"), 409, "timeline_full")
    returned = await patch_shipment(client, parties.partner_headers, sid, status="returned")
    assert returned.status_code == 200, returned.text
    assert len(await stored_events(db_engine, sid)) == 200
