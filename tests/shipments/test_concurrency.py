"""Races settled by PostgreSQL: partner capacity, timeline sequences, If-Match, idempotency keys.

Every race here is real: `asyncio.gather` sends the requests at once over the ASGI client, each
request takes its own pooled connection, and they meet on PostgreSQL's row and key locks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.assertions import assert_problem
from tests.conftest import count_rows
from tests.factories import account_with_token
from tests.shipments.factories import (
    DESTINATION_ZIP,
    Parties,
    active_shipments,
    bring_to,
    create_shipment,
    delivery_code,
    make_parties,
    patch_shipment,
    shipment_body,
    try_again_after_a_failed_attempt,
)

OTHER_ZIP = "94105"


async def all_at_once(requests: Iterable[Awaitable[httpx.Response]]) -> list[httpx.Response]:
    """Send the requests simultaneously and wait for every one of them to finish.

    An exception raised by the app (a 500 under ASGITransport) fails the test only after all
    requests are done, so none of them keeps running into the next test.
    """
    results = await asyncio.gather(*requests, return_exceptions=True)
    errors = [result for result in results if isinstance(result, BaseException)]
    assert not errors, f"{len(errors)} of {len(results)} requests raised: {errors[0]!r}"
    return [result for result in results if isinstance(result, httpx.Response)]


async def stored_active_shipments(db_engine: AsyncEngine, partner_id: str) -> int:
    async with db_engine.connect() as connection:
        result = await connection.execute(
            text("SELECT active_shipments FROM partners WHERE id = :id"),
            {"id": uuid.UUID(partner_id)},
        )
        return int(result.scalar_one())


async def stored_events(db_engine: AsyncEngine, shipment_id: str) -> list[tuple[int, str, Any]]:
    """(sequence, status, location_zip) of the shipment's stored events, by sequence."""
    async with db_engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT sequence, status, location_zip FROM shipment_events"
                " WHERE shipment_id = :id ORDER BY sequence"
            ),
            {"id": uuid.UUID(shipment_id)},
        )
        return [(row.sequence, row.status, row.location_zip) for row in result]


async def stored_version(db_engine: AsyncEngine, shipment_id: str) -> tuple[int, int]:
    """(version, last_sequence) of the stored shipment."""
    async with db_engine.connect() as connection:
        result = await connection.execute(
            text("SELECT version, last_sequence FROM shipments WHERE id = :id"),
            {"id": uuid.UUID(shipment_id)},
        )
        row = result.one()
        return int(row.version), int(row.last_sequence)


async def create_many(
    client: httpx.AsyncClient, headers: dict[str, str], count: int
) -> list[httpx.Response]:
    """`count` simultaneous creates to DESTINATION_ZIP, each with two tags."""
    return await all_at_once(
        client.post("/shipments", json=shipment_body(tags=["books", "gift"]), headers=headers)
        for _ in range(count)
    )


def split_created(responses: list[httpx.Response]) -> list[dict[str, Any]]:
    """The created shipments; every other response must be 409 `no_partner_available`."""
    created: list[dict[str, Any]] = []
    for response in responses:
        if response.status_code == 201:
            created.append(response.json())
        else:
            assert_problem(response, 409, "no_partner_available")
    return created


def create_in_background(
    client: httpx.AsyncClient, headers: dict[str, str], zip_code: str
) -> asyncio.Task[httpx.Response]:
    body = shipment_body(destination={"zip_code": zip_code})
    return asyncio.create_task(client.post("/shipments", json=body, headers=headers))


async def equally_free_partners(
    client: httpx.AsyncClient, zip_code: str, *, capacity: int
) -> list[str]:
    """Two new partners serving `zip_code`, in the order assignment prefers equally loaded
    partners: the lower id first."""
    partners = [
        await account_with_token(
            client, "partner", serviceable_zip_codes=[zip_code], max_handling_capacity=capacity
        )
        for _ in range(2)
    ]
    return sorted((partner["id"] for partner, _ in partners), key=uuid.UUID)


# --- assignment ----------------------------------------------------------------------------


async def test_twenty_simultaneous_creates_take_exactly_the_three_free_slots(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client, max_handling_capacity=3)
    partner_id = parties.partner["id"]

    responses = await create_many(client, parties.seller_headers, 20)

    created = split_created(responses)
    assert len(created) == 3
    assert Counter(r.status_code for r in responses) == {201: 3, 409: 17}
    assert {shipment["partner"]["id"] for shipment in created} == {partner_id}
    assert len({shipment["id"] for shipment in created}) == 3
    # The refused requests stored nothing at all: no shipment, no event, no tag link.
    assert await count_rows(db_engine, "shipments") == 3
    assert await count_rows(db_engine, "shipment_events") == 3
    assert await count_rows(db_engine, "shipment_tags") == 6
    assert await stored_active_shipments(db_engine, partner_id) == 3
    assert await active_shipments(client, parties.partner_headers) == 3

    # Cancelling one (a terminal status) frees its slot at once, and only that one slot.
    cancelled = await client.post(
        f"/shipments/{created[0]['id']}/cancel", headers=parties.seller_headers
    )
    assert cancelled.status_code == 200, cancelled.text
    assert await stored_active_shipments(db_engine, partner_id) == 2
    replacement = await create_shipment(client, parties.seller_headers)
    assert replacement["partner"]["id"] == partner_id
    assert await stored_active_shipments(db_engine, partner_id) == 3
    full = await client.post("/shipments", json=shipment_body(), headers=parties.seller_headers)
    assert_problem(full, 409, "no_partner_available")
    assert await count_rows(db_engine, "shipments") == 4


async def test_returned_shipment_frees_its_slot(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client, max_handling_capacity=1)
    shipment = await create_shipment(client, parties.seller_headers)
    assert_problem(
        await client.post("/shipments", json=shipment_body(), headers=parties.seller_headers),
        409,
        "no_partner_available",
    )
    for step in ("in_transit", "returned"):
        response = await client.patch(
            f"/shipments/{shipment['id']}", json={"status": step}, headers=parties.partner_headers
        )
        assert response.status_code == 200, response.text

    assert await active_shipments(client, parties.partner_headers) == 0
    await create_shipment(client, parties.seller_headers)
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 1


async def test_sequential_creates_alternate_between_equally_free_partners(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client, max_handling_capacity=5)
    second, second_headers = await account_with_token(
        client, "partner", serviceable_zip_codes=[DESTINATION_ZIP], max_handling_capacity=5
    )
    outsider, _ = await account_with_token(
        client, "partner", serviceable_zip_codes=[OTHER_ZIP], max_handling_capacity=50
    )

    assigned = [
        (await create_shipment(client, parties.seller_headers))["partner"]["id"] for _ in range(4)
    ]

    # Least loaded first: after each assignment the other partner is the less loaded one (or
    # they tie again), so consecutive pairs go to different partners.
    assert assigned[0] != assigned[1]
    assert assigned[2] != assigned[3]
    assert Counter(assigned) == {parties.partner["id"]: 2, second["id"]: 2}
    assert await active_shipments(client, parties.partner_headers) == 2
    assert await active_shipments(client, second_headers) == 2
    assert await stored_active_shipments(db_engine, outsider["id"]) == 0


async def test_a_new_partner_gets_shipments_until_it_catches_up(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client, max_handling_capacity=10)
    for _ in range(2):
        await create_shipment(client, parties.seller_headers)
    newcomer, _ = await account_with_token(
        client, "partner", serviceable_zip_codes=[DESTINATION_ZIP], max_handling_capacity=10
    )

    assigned = [
        (await create_shipment(client, parties.seller_headers))["partner"]["id"] for _ in range(2)
    ]

    assert assigned == [newcomer["id"], newcomer["id"]]
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 2
    assert await stored_active_shipments(db_engine, newcomer["id"]) == 2


async def test_fifteen_simultaneous_creates_fill_two_partners_exactly(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client, max_handling_capacity=3)
    second, _ = await account_with_token(
        client, "partner", serviceable_zip_codes=[DESTINATION_ZIP], max_handling_capacity=3
    )
    outsider, _ = await account_with_token(
        client, "partner", serviceable_zip_codes=[OTHER_ZIP], max_handling_capacity=50
    )

    responses = await create_many(client, parties.seller_headers, 15)

    created = split_created(responses)
    assert Counter(r.status_code for r in responses) == {201: 6, 409: 9}
    assert Counter(shipment["partner"]["id"] for shipment in created) == {
        parties.partner["id"]: 3,
        second["id"]: 3,
    }
    assert await count_rows(db_engine, "shipments") == 6
    assert await count_rows(db_engine, "shipment_events") == 6
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 3
    assert await stored_active_shipments(db_engine, second["id"]) == 3
    assert await stored_active_shipments(db_engine, outsider["id"]) == 0


# --- timeline and versions -----------------------------------------------------------------


async def sessions_waiting_on_locks(engine: AsyncEngine) -> int:
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with engine.connect() as connection:
        waiting: int = (await connection.execute(query)).scalar_one()
    return waiting


async def until_waiting_on_locks(engine: AsyncEngine, sessions: int) -> None:
    async with asyncio.timeout(10):
        while True:
            if await sessions_waiting_on_locks(engine) >= sessions:
                return
            await asyncio.sleep(0.01)


async def test_a_create_that_lost_its_partner_lets_go_of_it_before_trying_the_next(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """A create waits on the best partner, which fills up meanwhile; it then tries the next.

    The create keeps a lock on the first partner's row although it got no slot there (its
    choice's, and its foreign key's). Holding it while waiting for the second partner
    deadlocked against anyone holding the second and waiting for the first (here: `other`), and
    one of them was aborted: the create lets go of it (its attempt's savepoint) first.
    """
    _, seller_headers = await account_with_token(client, "seller")
    zip_code = "73301"
    first, second = await equally_free_partners(client, zip_code, capacity=1)

    async with db_engine.connect() as filler, db_engine.connect() as other:
        # `filler` fills the first partner but has not committed, so the create still chooses
        # it and waits there for its slot; `other` holds the second.
        await filler.execute(
            text("UPDATE partners SET active_shipments = 1 WHERE id = :id"), {"id": first}
        )
        lock_query = "SELECT id FROM partners WHERE id = :id FOR UPDATE"
        await other.execute(text(lock_query), {"id": second})
        create = create_in_background(client, seller_headers, zip_code)
        await until_waiting_on_locks(db_engine, 1)
        # `other` queues for the first partner too, behind the create.
        other_waits = asyncio.create_task(other.execute(text(lock_query), {"id": first}))
        await until_waiting_on_locks(db_engine, 2)

        await filler.commit()
        # The create finds the first partner full and must free its lock before waiting on the
        # second: only then can `other` take the first partner and finish.
        async with asyncio.timeout(10):
            await other_waits
        await other.commit()
        response = await create

    assert response.status_code == 201, response.text
    assert response.json()["partner"]["id"] == second


async def test_thirty_simultaneous_scans_get_gapless_unique_sequences(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    url = f"/shipments/{shipment['id']}"
    first = await client.patch(url, json={"status": "in_transit"}, headers=parties.partner_headers)
    assert first.status_code == 200, first.text
    zips = [f"9{index:04d}" for index in range(30)]

    responses = await all_at_once(
        client.patch(
            url,
            json={"status": "in_transit", "location_zip": zip_code},
            headers=parties.partner_headers,
        )
        for zip_code in zips
    )

    assert [r.status_code for r in responses] == [200] * 30, [r.text for r in responses]
    total = 2 + len(zips)
    # Each accepted scan saw its own version and its own event as the newest one.
    assert sorted(r.json()["version"] for r in responses) == list(range(3, total + 1))
    for zip_code, response in zip(zips, responses, strict=True):
        body = response.json()
        assert body["timeline"][-1]["location_zip"] == zip_code
        assert body["timeline"][-1]["sequence"] == body["version"]
    events = await stored_events(db_engine, shipment["id"])
    assert [sequence for sequence, _, _ in events] == list(range(1, total + 1))
    assert [status for _, status, _ in events] == ["placed"] + ["in_transit"] * (total - 1)
    scanned = Counter(zip_code for _, _, zip_code in events[2:])
    assert scanned == Counter(zips)
    assert await stored_version(db_engine, shipment["id"]) == (total, total)
    read = await client.get(url, headers=parties.seller_headers)
    assert read.json()["version"] == total
    assert [event["sequence"] for event in read.json()["timeline"]] == list(range(1, total + 1))


async def test_simultaneous_if_match_updates_let_exactly_one_through(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    url = f"/shipments/{shipment['id']}"
    moved = await client.patch(url, json={"status": "in_transit"}, headers=parties.partner_headers)
    assert moved.status_code == 200, moved.text
    version = moved.json()["version"]
    zips = [f"8{index:04d}" for index in range(10)]

    responses = await all_at_once(
        client.patch(
            url,
            json={"status": "in_transit", "location_zip": zip_code},
            headers={**parties.partner_headers, "If-Match": f'"{version}"'},
        )
        for zip_code in zips
    )

    assert Counter(r.status_code for r in responses) == {200: 1, 412: 9}
    for response in responses:
        if response.status_code == 412:
            assert_problem(response, 412, "version_mismatch")
    winner = next(zip_code for zip_code, r in zip(zips, responses, strict=True) if r.is_success)
    events = await stored_events(db_engine, shipment["id"])
    assert events == [(1, "placed", None), (2, "in_transit", None), (3, "in_transit", winner)]
    assert await stored_version(db_engine, shipment["id"]) == (version + 1, 3)


async def test_simultaneous_cancels_release_the_slot_once(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client, max_handling_capacity=3)
    shipment = await create_shipment(client, parties.seller_headers)
    await create_shipment(client, parties.seller_headers)
    url = f"/shipments/{shipment['id']}/cancel"

    responses = await all_at_once(
        client.post(url, headers=parties.seller_headers) for _ in range(10)
    )

    assert Counter(r.status_code for r in responses) == {200: 1, 409: 9}
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "invalid_transition")
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 1
    assert [s for _, s, _ in await stored_events(db_engine, shipment["id"])] == [
        "placed",
        "cancelled",
    ]


async def test_cancel_racing_a_pickup_has_one_winner_and_consistent_capacity(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    url = f"/shipments/{shipment['id']}"

    cancel, pickup = await all_at_once(
        [
            client.post(f"{url}/cancel", headers=parties.seller_headers),
            client.patch(url, json={"status": "in_transit"}, headers=parties.partner_headers),
        ]
    )

    assert sorted([cancel.status_code, pickup.status_code]) == [200, 409]
    loser = pickup if cancel.status_code == 200 else cancel
    assert_problem(loser, 409, "invalid_transition")
    final = "cancelled" if cancel.status_code == 200 else "in_transit"
    events = await stored_events(db_engine, shipment["id"])
    assert [status for _, status, _ in events] == ["placed", final]
    expected_active = 0 if final == "cancelled" else 1
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == expected_active


# --- idempotency ---------------------------------------------------------------------------


async def test_simultaneous_retries_with_one_key_create_one_shipment(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    body = shipment_body()
    headers = {**parties.seller_headers, "Idempotency-Key": str(uuid.uuid4())}

    responses = await all_at_once(
        client.post("/shipments", json=body, headers=headers) for _ in range(10)
    )

    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    replayed = [r.headers.get("idempotent-replayed") for r in responses]
    assert Counter(replayed) == {"true": 9, None: 1}
    original = next(r for r in responses if "idempotent-replayed" not in r.headers)
    assert all(r.json() == original.json() for r in responses)
    assert await count_rows(db_engine, "shipments") == 1
    assert await count_rows(db_engine, "shipment_events") == 1
    assert await count_rows(db_engine, "idempotency_keys") == 1
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 1

    # The same key with another body is refused, and nothing new is stored.
    other = await client.post("/shipments", json={**body, "content": "A lamp"}, headers=headers)
    assert_problem(other, 422, "idempotency_key_reused")
    assert await count_rows(db_engine, "shipments") == 1
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 1


async def test_simultaneous_reuse_with_different_bodies_creates_one_shipment(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    headers = {**parties.seller_headers, "Idempotency-Key": "order-1042"}
    bodies = [shipment_body(content=f"Box {index}") for index in range(8)]

    responses = await all_at_once(
        client.post("/shipments", json=body, headers=headers) for body in bodies
    )

    assert Counter(r.status_code for r in responses) == {201: 1, 422: 7}
    for response in responses:
        if response.status_code == 422:
            assert_problem(response, 422, "idempotency_key_reused")
    assert await count_rows(db_engine, "shipments") == 1
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 1


async def test_the_same_key_from_another_seller_is_a_different_request(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    _, other_seller_headers = await account_with_token(client, "seller")
    body = shipment_body()
    key = {"Idempotency-Key": "shared-key-1"}

    first = await client.post("/shipments", json=body, headers={**parties.seller_headers, **key})
    second = await client.post("/shipments", json=body, headers={**other_seller_headers, **key})
    again = await client.post("/shipments", json=body, headers={**parties.seller_headers, **key})

    assert first.status_code == second.status_code == again.status_code == 201
    assert "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert await count_rows(db_engine, "shipments") == 2
    assert await count_rows(db_engine, "idempotency_keys") == 2
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 2


async def test_a_key_whose_request_failed_can_be_used_again(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    _, seller_headers = await account_with_token(client, "seller")
    headers = {**seller_headers, "Idempotency-Key": "retry-after-409"}
    body = shipment_body()

    refused = await all_at_once(
        client.post("/shipments", json=body, headers=headers) for _ in range(3)
    )
    for response in refused:
        assert_problem(response, 409, "no_partner_available")
    assert await count_rows(db_engine, "idempotency_keys") == 0
    assert await count_rows(db_engine, "shipments") == 0

    partner, _ = await account_with_token(
        client, "partner", serviceable_zip_codes=[DESTINATION_ZIP], max_handling_capacity=5
    )
    created = await client.post("/shipments", json=body, headers=headers)
    assert created.status_code == 201, created.text
    assert "idempotent-replayed" not in created.headers
    assert created.json()["partner"]["id"] == partner["id"]
    replay = await client.post("/shipments", json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == created.json()["id"]
    assert await count_rows(db_engine, "shipments") == 1


async def test_a_retry_listing_the_same_tags_in_another_order_is_the_same_request(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    headers = {**parties.seller_headers, "Idempotency-Key": "order-tags-1"}
    body = shipment_body(tags=["gift", "books"])
    first = await client.post("/shipments", json=body, headers=headers)
    assert first.status_code == 201, first.text

    # Another order, another case, a duplicate: the same set of tags.
    retry = await client.post(
        "/shipments", json={**body, "tags": ["Books", "gift", "books"]}, headers=headers
    )
    other_tags = await client.post("/shipments", json={**body, "tags": ["books"]}, headers=headers)

    assert retry.status_code == 201, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()
    assert_problem(other_tags, 422, "idempotency_key_reused")
    assert await count_rows(db_engine, "shipments") == 1


async def test_a_create_takes_a_free_partner_rather_than_queue_behind_a_busy_one(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Two partners serve the zip and one is held by another transaction (another create,
    until it commits): the create takes the other one at once instead of waiting."""
    _, seller_headers = await account_with_token(client, "seller")
    zip_code = "73302"
    first, second = await equally_free_partners(client, zip_code, capacity=5)

    async with db_engine.connect() as busy:
        lock_query = "SELECT id FROM partners WHERE id = :id FOR UPDATE"
        await busy.execute(text(lock_query), {"id": first})
        async with asyncio.timeout(10):  # it would wait for `busy` forever
            response = await client.post(
                "/shipments",
                json=shipment_body(destination={"zip_code": zip_code}),
                headers=seller_headers,
            )
        await busy.rollback()

    assert response.status_code == 201, response.text
    assert response.json()["partner"]["id"] == second


async def test_a_create_stalled_in_its_writes_does_not_hold_up_its_partner(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """A create takes its partner's slot only after writing the shipment, so another create for
    the same (only) partner goes through while the first is still writing.

    The first create stalls on a tag that another transaction is inserting (its insert waits for
    that transaction to end). Had it taken the slot first, the partner's row would stay locked
    through the stall and the second create would wait behind it.
    """
    # Two sellers: an unverified seller's creates also queue on its own row (its count).
    _, first_seller = await account_with_token(client, "seller")
    _, second_seller = await account_with_token(client, "seller")
    zip_code = "73303"
    partner, _ = await account_with_token(
        client, "partner", serviceable_zip_codes=[zip_code], max_handling_capacity=5
    )
    destination = {"zip_code": zip_code}

    async with db_engine.connect() as tag_writer:
        await tag_writer.execute(text("INSERT INTO tags (name) VALUES ('stalled-tag')"))
        stalled = asyncio.create_task(
            client.post(
                "/shipments",
                json=shipment_body(destination=destination, tags=["stalled-tag"]),
                headers=first_seller,
            )
        )
        await until_waiting_on_locks(db_engine, 1)
        async with asyncio.timeout(10):  # it would wait for the stalled create forever
            second = await client.post(
                "/shipments", json=shipment_body(destination=destination), headers=second_seller
            )
        assert not stalled.done()
        await tag_writer.rollback()
        first = await stalled

    assert second.status_code == 201, second.text
    assert first.status_code == 201, first.text
    assert first.json()["tags"] == ["stalled-tag"]
    assert {first.json()["partner"]["id"], second.json()["partner"]["id"]} == {partner["id"]}
    assert await stored_active_shipments(db_engine, partner["id"]) == 2


async def test_a_create_whose_partner_filled_up_meanwhile_is_written_once_for_the_next(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """The partner a create chose fills up before the create takes its slot: the create undoes
    what it wrote for that partner and is stored once, for the partner with room, and its
    `Idempotency-Key` replays that one shipment."""
    _, seller_headers = await account_with_token(client, "seller")
    zip_code = "73304"
    first, second = await equally_free_partners(client, zip_code, capacity=1)
    body = shipment_body(destination={"zip_code": zip_code}, tags=["fragile"])
    headers = {**seller_headers, "Idempotency-Key": "order-7731"}

    async with db_engine.connect() as filler:
        # Not committed yet: the create still sees the first partner free, chooses it, writes,
        # and waits for this row when it takes the slot.
        await filler.execute(
            text("UPDATE partners SET active_shipments = 1 WHERE id = :id"), {"id": first}
        )
        create = asyncio.create_task(client.post("/shipments", json=body, headers=headers))
        await until_waiting_on_locks(db_engine, 1)
        await filler.commit()
        response = await create

    assert response.status_code == 201, response.text
    created = response.json()
    assert created["partner"]["id"] == second
    assert await stored_active_shipments(db_engine, first) == 1  # the filler's, not the create's
    assert await stored_active_shipments(db_engine, second) == 1
    assert await count_rows(db_engine, "shipments") == 1
    assert [status for _, status, _ in await stored_events(db_engine, created["id"])] == ["placed"]
    async with db_engine.connect() as connection:
        stored = await connection.execute(
            text(
                "SELECT (SELECT count(*) FROM shipment_tags),"
                " (SELECT partner_id FROM shipment_tags),"
                " (SELECT count(*) FROM outbox_messages WHERE shipment_id IS NOT NULL),"
                " (SELECT count(*) FROM events WHERE type = 'shipment.created'),"
                " (SELECT count(*) FROM idempotency_keys)"
            )
        )
        links, link_partner, emails, feed_events, keys = stored.one()
    assert (links, str(link_partner), emails, feed_events, keys) == (1, second, 1, 1, 1)
    replay = await client.post("/shipments", json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == created


async def test_a_create_waits_for_the_only_partner_held_by_an_operator(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """The only partner with room is held FOR UPDATE for a moment (an operator's change, a
    password reset): the create waits for it rather than answer that nobody has room."""
    _, seller_headers = await account_with_token(client, "seller")
    zip_code = "73305"
    partner, _ = await account_with_token(
        client, "partner", serviceable_zip_codes=[zip_code], max_handling_capacity=2
    )

    async with db_engine.connect() as operator:
        lock = "SELECT id FROM partners WHERE id = :id FOR UPDATE"
        await operator.execute(text(lock), {"id": partner["id"]})
        create = create_in_background(client, seller_headers, zip_code)
        await until_waiting_on_locks(db_engine, 1)
        await operator.commit()
        response = await create

    assert response.status_code == 201, response.text
    assert response.json()["partner"]["id"] == partner["id"]
    assert await stored_active_shipments(db_engine, partner["id"]) == 1


async def test_simultaneous_creates_with_a_new_tag_fill_two_partners_without_deadlock(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Thirty creates at once, all first uses of one tag, into a zip whose two partners have
    room for fifteen: they wait on each other's tag and on each partner's slot, some lose their
    partner and choose again, and exactly fifteen are stored, the rest refused with 409."""
    _, seller_headers = await account_with_token(client, "seller")
    zip_code = "73306"
    small, _ = await account_with_token(
        client, "partner", serviceable_zip_codes=[zip_code], max_handling_capacity=5
    )
    large, _ = await account_with_token(
        client, "partner", serviceable_zip_codes=[zip_code], max_handling_capacity=10
    )
    body = shipment_body(destination={"zip_code": zip_code}, tags=["first-use", "rush"])

    responses = await all_at_once(
        client.post("/shipments", json=body, headers=seller_headers) for _ in range(30)
    )

    created = split_created(responses)
    assert Counter(r.status_code for r in responses) == {201: 15, 409: 15}
    assert Counter(shipment["partner"]["id"] for shipment in created) == {
        small["id"]: 5,
        large["id"]: 10,
    }
    assert await stored_active_shipments(db_engine, small["id"]) == 5
    assert await stored_active_shipments(db_engine, large["id"]) == 10
    assert await count_rows(db_engine, "shipments") == 15
    assert await count_rows(db_engine, "shipment_events") == 15
    assert await count_rows(db_engine, "shipment_tags") == 30
    async with db_engine.connect() as connection:
        tags = await connection.execute(text("SELECT name FROM tags ORDER BY name"))
        assert [name for (name,) in tags] == ["first-use", "rush"]


# --- delivery operations: scans, failed attempts, corrections (product.md §12) --------------

TERMINAL_STATUSES = ("delivered", "cancelled", "returned")
# Two zips, each served by one partner only, for corrections that move shipments between them.
ZIP_A = "30301"
ZIP_B = "60601"


async def correct(
    client: httpx.AsyncClient,
    seller_headers: dict[str, str],
    shipment_id: str,
    body: dict[str, Any],
    *,
    if_match: int | None = None,
) -> httpx.Response:
    """PATCH /shipments/{id}/delivery-details; the response unchecked."""
    headers = dict(seller_headers)
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"'
    return await client.patch(
        f"/shipments/{shipment_id}/delivery-details", json=body, headers=headers
    )


def new_zip(zip_code: str) -> dict[str, Any]:
    return {"destination": {"zip_code": zip_code}}


async def stored_shipment(db_engine: AsyncEngine, shipment_id: str) -> dict[str, Any]:
    """The stored shipment's row, as a dict of its columns."""
    async with db_engine.connect() as connection:
        result = await connection.execute(
            text("SELECT * FROM shipments WHERE id = :id"), {"id": uuid.UUID(shipment_id)}
        )
        return dict(result.mappings().one())


async def stored_scan_ids(db_engine: AsyncEngine, shipment_id: str) -> list[str]:
    """The scan ids of the shipment's stored events, by sequence (events without one left out)."""
    async with db_engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT scan_id FROM shipment_events"
                " WHERE shipment_id = :id AND scan_id IS NOT NULL ORDER BY sequence"
            ),
            {"id": uuid.UUID(shipment_id)},
        )
        return [scan_id for (scan_id,) in result]


async def counters_match_shipments(db_engine: AsyncEngine) -> None:
    """Every live partner's `active_shipments` equals its real count of non-terminal
    shipments, and every tag link carries its shipment's partner."""
    async with db_engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT p.id, p.active_shipments, p.max_handling_capacity,"
                " (SELECT count(*) FROM shipments s WHERE s.partner_id = p.id"
                "  AND s.livemode AND s.status NOT IN ('delivered', 'cancelled', 'returned'))"
                " AS real FROM partners p WHERE p.status = 'approved'"
            )
        )
        counts = [
            (row.id, row.active_shipments, row.real, row.max_handling_capacity) for row in rows
        ]
        stale_links = await connection.scalar(
            text(
                "SELECT count(*) FROM shipment_tags t JOIN shipments s ON s.id = t.shipment_id"
                " WHERE t.partner_id <> s.partner_id"
            )
        )
    for partner_id, counted, real, capacity in counts:
        assert counted == real, f"partner {partner_id}: counter {counted}, real {real}"
        assert counted <= capacity, f"partner {partner_id}: {counted} over capacity {capacity}"
    assert stale_links == 0


def assert_gapless(events: list[tuple[int, str, Any]]) -> None:
    assert [sequence for sequence, _, _ in events] == list(range(1, len(events) + 1))


async def two_zip_partners(
    client: httpx.AsyncClient, *, capacity_a: int = 20, capacity_b: int = 20
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any], dict[str, str]]:
    """A partner serving ZIP_A only and one serving ZIP_B only: (a, a_headers, b, b_headers)."""
    a, a_headers = await account_with_token(
        client, "partner", serviceable_zip_codes=[ZIP_A], max_handling_capacity=capacity_a
    )
    b, b_headers = await account_with_token(
        client, "partner", serviceable_zip_codes=[ZIP_B], max_handling_capacity=capacity_b
    )
    return a, a_headers, b, b_headers


async def in_transit_shipments(
    client: httpx.AsyncClient, parties: Parties, count: int
) -> list[dict[str, Any]]:
    """`count` new shipments of the parties, each reported in transit."""
    shipments = []
    for _ in range(count):
        shipment = await create_shipment(client, parties.seller_headers)
        moved = await patch_shipment(
            client, parties.partner_headers, shipment["id"], status="in_transit"
        )
        assert moved.status_code == 200, moved.text
        shipments.append(moved.json())
    return shipments


def scan(shipment: dict[str, Any], scan_id: str, **report: Any) -> dict[str, Any]:
    """A scan of `shipment` for POST /scans: a location scan unless `report` says otherwise."""
    return {
        "scan_id": scan_id,
        "tracking_number": shipment["tracking_number"],
        **(report or {"location": {"zip_code": "10001", "lat": 40.75, "lon": -73.99}}),
    }


async def post_scans(
    client: httpx.AsyncClient, headers: dict[str, str], scans: list[dict[str, Any]]
) -> httpx.Response:
    return await client.post("/scans", json={"scans": scans}, headers=headers)


async def stored_scan_sequences(db_engine: AsyncEngine, shipment_id: str) -> dict[str, int]:
    """scan_id -> sequence of the shipment's events recorded by scans."""
    async with db_engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT scan_id, sequence FROM shipment_events"
                " WHERE shipment_id = :id AND scan_id IS NOT NULL"
            ),
            {"id": uuid.UUID(shipment_id)},
        )
        return {str(row.scan_id): int(row.sequence) for row in result}


def results_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


async def test_simultaneous_scan_batches_and_patches_record_every_report_once(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Six batches (two scans of each of four shipments each) and twelve single reports on the
    same shipments at once: every one is recorded exactly once, with gapless sequences, and
    each batch's answer names the sequence its scan got."""
    parties = await make_parties(client, max_handling_capacity=10)
    shipments = await in_transit_shipments(client, parties, 4)
    batches = [
        [
            scan(shipment, f"van{batch}-{index}-{repeat}")
            for index, shipment in enumerate(shipments)
            for repeat in range(2)
        ]
        for batch in range(6)
    ]
    patches = [
        patch_shipment(
            client,
            parties.partner_headers,
            shipment["id"],
            location={"zip_code": f"2{index}{repeat:03d}", "city": "Newark"},
        )
        for index, shipment in enumerate(shipments)
        for repeat in range(3)
    ]

    responses = await all_at_once(
        [*(post_scans(client, parties.partner_headers, batch) for batch in batches), *patches]
    )

    batch_responses, patch_responses = responses[:6], responses[6:]
    assert [r.status_code for r in patch_responses] == [200] * 12, [r.text for r in patch_responses]
    answered: dict[str, dict[str, int]] = {shipment["id"]: {} for shipment in shipments}
    by_number = {shipment["tracking_number"]: shipment["id"] for shipment in shipments}
    for response in batch_responses:
        for result in results_of(response):
            assert result["result"] == "accepted", result
            answered[by_number[result["tracking_number"]]][result["scan_id"]] = result["sequence"]
    for shipment in shipments:
        events = await stored_events(db_engine, shipment["id"])
        assert_gapless(events)
        assert len(events) == 2 + 6 * 2 + 3
        # Each scan recorded once, at the sequence its batch was told.
        assert await stored_scan_sequences(db_engine, shipment["id"]) == answered[shipment["id"]]
        assert len(await stored_scan_ids(db_engine, shipment["id"])) == 12
        assert await stored_version(db_engine, shipment["id"]) == (len(events), len(events))


async def test_a_batch_sent_several_times_at_once_records_each_scan_once(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """A van retries its upload while the first try is still running: one copy records each
    scan, the others answer `duplicate` with the same sequence, and no status change (a
    failed attempt included) is applied twice."""
    parties = await make_parties(client, max_handling_capacity=10)
    placed = await create_shipment(client, parties.seller_headers)
    moving = (await in_transit_shipments(client, parties, 1))[0]
    at_door = await create_shipment(client, parties.seller_headers)
    await bring_to(client, db_engine, parties, at_door["id"], "out_for_delivery")
    batch = [
        scan(placed, "retry-1", status="in_transit", location={"zip_code": "02110"}),
        scan(moving, "retry-2"),
        scan(moving, "retry-3", status="out_for_delivery"),
        scan(at_door, "retry-4", status="in_transit", failure_reason="recipient_unavailable"),
        scan(placed, "retry-5", note="Sorted at the hub"),
    ]

    responses = await all_at_once(
        post_scans(client, parties.partner_headers, batch) for _ in range(6)
    )

    outcomes: dict[str, Counter[str]] = {item["scan_id"]: Counter() for item in batch}
    sequences: dict[str, set[int]] = {item["scan_id"]: set() for item in batch}
    for response in responses:
        for result in results_of(response):
            outcomes[result["scan_id"]][result["result"]] += 1
            sequences[result["scan_id"]].add(result["sequence"])
    assert all(counts == {"accepted": 1, "duplicate": 5} for counts in outcomes.values()), outcomes
    assert all(len(seen) == 1 for seen in sequences.values()), sequences
    for shipment, expected in ((placed, 3), (moving, 4), (at_door, 4)):
        events = await stored_events(db_engine, shipment["id"])
        assert_gapless(events)
        assert len(events) == expected
    assert await stored_scan_sequences(db_engine, placed["id"]) == {
        "retry-1": next(iter(sequences["retry-1"])),
        "retry-5": next(iter(sequences["retry-5"])),
    }
    door = await stored_shipment(db_engine, at_door["id"])
    assert (door["status"], door["delivery_attempts"]) == ("in_transit", 1)
    assert (await stored_shipment(db_engine, moving["id"]))["status"] == "out_for_delivery"


async def test_batches_listing_the_same_shipments_in_opposite_orders_do_not_deadlock(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Twelve batches over the same six shipments, half in one order and half in the other
    (some with the tracking numbers in lower case): they lock in one order, so none is
    aborted by PostgreSQL's deadlock detector (a 500 or 503) and every scan is recorded."""
    parties = await make_parties(client, max_handling_capacity=10)
    shipments = await in_transit_shipments(client, parties, 6)
    batches = []
    for batch in range(12):
        ordered = shipments if batch % 2 else list(reversed(shipments))
        scans = [scan(shipment, f"order{batch}-{index}") for index, shipment in enumerate(ordered)]
        if batch % 3 == 0:
            scans = [{**item, "tracking_number": item["tracking_number"].lower()} for item in scans]
        batches.append(scans)

    async with asyncio.timeout(30):
        responses = await all_at_once(
            post_scans(client, parties.partner_headers, batch) for batch in batches
        )

    for response in responses:
        assert [result["result"] for result in results_of(response)] == ["accepted"] * 6
    for shipment in shipments:
        events = await stored_events(db_engine, shipment["id"])
        assert_gapless(events)
        assert len(events) == 2 + 12
        assert len(set(await stored_scan_ids(db_engine, shipment["id"]))) == 12


async def returned_events(db_engine: AsyncEngine, shipment_id: str) -> int:
    return sum(status == "returned" for _, status, _ in await stored_events(db_engine, shipment_id))


async def test_simultaneous_failed_attempts_count_once_each_and_return_once(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Each time the shipment is out for delivery, eight reports of the failed attempt arrive
    at once, half with `If-Match`: one is recorded, the others are 412 (stale version) or 422
    (no longer out for delivery). The third recorded attempt returns the shipment once, and
    frees the partner's slot once."""
    parties = await make_parties(client, max_handling_capacity=5)
    await create_shipment(client, parties.seller_headers)  # keeps a slot taken
    shipment = await create_shipment(client, parties.seller_headers)
    await bring_to(client, db_engine, parties, shipment["id"], "in_transit")
    reasons = ["recipient_unavailable", "access_restricted", "business_closed", "other"]
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 2

    for attempt in range(1, 4):
        out = await patch_shipment(
            client, parties.partner_headers, shipment["id"], status="out_for_delivery"
        )
        assert out.status_code == 200, out.text
        version = out.json()["version"]
        headers_with_version = {**parties.partner_headers, "If-Match": out.headers["etag"]}
        requests = []
        for index in range(8):
            reason = reasons[index % 4]
            body: dict[str, Any] = {"status": "in_transit", "failure_reason": reason}
            if reason == "other":
                body["note"] = "Dog at the gate"
            headers = headers_with_version if index % 2 else parties.partner_headers
            requests.append(
                client.patch(f"/shipments/{shipment['id']}", json=body, headers=headers)
            )

        responses = await all_at_once(requests)

        accepted = [r for r in responses if r.status_code == 200]
        assert len(accepted) == 1, [r.text for r in responses]
        assert accepted[0].json()["attempts"] == attempt
        assert accepted[0].json()["version"] == version + (2 if attempt == 3 else 1)
        final = "returned" if attempt == 3 else "in_transit"
        assert accepted[0].json()["status"] == final
        for index, response in enumerate(responses):
            if response.status_code == 200:
                continue
            if index % 2:
                assert_problem(response, 412, "version_mismatch")
            elif attempt < 3:
                assert_problem(response, 422, "failure_reason_not_allowed")
            else:
                assert_problem(response, 409, "invalid_transition")
        stored = await stored_shipment(db_engine, shipment["id"])
        assert (stored["status"], stored["delivery_attempts"]) == (final, attempt)

    events = await stored_events(db_engine, shipment["id"])
    assert_gapless(events)
    # placed, in_transit, then 3 x (out_for_delivery, failed attempt), then the return.
    assert len(events) == 2 + 3 * 2 + 1
    assert await returned_events(db_engine, shipment["id"]) == 1
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 1
    await counters_match_shipments(db_engine)

    # Late copies of the report change nothing on the returned shipment.
    late = await all_at_once(
        patch_shipment(
            client,
            parties.partner_headers,
            shipment["id"],
            status="in_transit",
            failure_reason="weather",
        )
        for _ in range(4)
    )
    for response in late:
        assert_problem(response, 409, "invalid_transition")
    assert await stored_events(db_engine, shipment["id"]) == events
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 1


async def test_the_last_attempt_racing_a_refusal_and_a_delivery_ends_the_shipment_once(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Two attempts have failed and the shipment is out for delivery again: the third failed
    attempt (which returns it by itself), a refusal (which returns it at once) and a delivery
    arrive together. Exactly one ends the shipment, with one final event and one freed slot;
    the others find it final (409)."""
    parties = await make_parties(client, max_handling_capacity=5)
    await create_shipment(client, parties.seller_headers)  # keeps a slot taken
    shipment = await create_shipment(client, parties.seller_headers)
    await bring_to(client, db_engine, parties, shipment["id"], "out_for_delivery")
    for _ in range(2):
        await try_again_after_a_failed_attempt(client, parties.partner_headers, shipment["id"])
    code = await delivery_code(db_engine, shipment["id"])
    before = await stored_events(db_engine, shipment["id"])
    reports: list[dict[str, Any]] = [
        *({"status": "in_transit", "failure_reason": "recipient_unavailable"} for _ in range(3)),
        *({"status": "returned", "failure_reason": "refused"} for _ in range(3)),
        *({"status": "delivered", "verification_code": code} for _ in range(2)),
    ]

    responses = await all_at_once(
        patch_shipment(client, parties.partner_headers, shipment["id"], **report)
        for report in reports
    )

    accepted = [r.json() for r in responses if r.status_code == 200]
    assert len(accepted) == 1, [r.text for r in responses]
    for response in responses:
        if response.status_code != 200:
            assert_problem(response, 409, "invalid_transition")
    stored = await stored_shipment(db_engine, shipment["id"])
    assert stored["status"] == accepted[0]["status"]
    assert stored["status"] in ("returned", "delivered")
    assert stored["delivery_attempts"] == (3 if stored["status"] == "returned" else 2)
    events = await stored_events(db_engine, shipment["id"])
    assert_gapless(events)
    added = [status for _, status, _ in events[len(before) :]]
    final_events = [status for status in added if status in TERMINAL_STATUSES]
    assert final_events == [stored["status"]]
    assert await stored_active_shipments(db_engine, parties.partner["id"]) == 1
    await counters_match_shipments(db_engine)


async def test_corrections_moving_shipments_both_ways_between_two_partners_keep_counts_exact(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Five shipments move from A's zip to B's while five move from B's to A's, all at once,
    four times over: no deadlock, every correction lands, and both partners' counters equal
    their real number of active shipments after every round."""
    _, seller_headers = await account_with_token(client, "seller")
    a, _, b, _ = await two_zip_partners(client)
    at_a = [
        await create_shipment(client, seller_headers, destination={"zip_code": ZIP_A})
        for _ in range(5)
    ]
    at_b = [
        await create_shipment(client, seller_headers, destination={"zip_code": ZIP_B})
        for _ in range(5)
    ]
    partner_of = {s["id"]: a["id"] for s in at_a} | {s["id"]: b["id"] for s in at_b}
    zip_of = {s["id"]: ZIP_A for s in at_a} | {s["id"]: ZIP_B for s in at_b}
    other = {ZIP_A: (ZIP_B, b["id"]), ZIP_B: (ZIP_A, a["id"])}

    for _ in range(4):
        ids = list(partner_of)
        async with asyncio.timeout(30):
            responses = await all_at_once(
                correct(client, seller_headers, shipment_id, new_zip(other[zip_of[shipment_id]][0]))
                for shipment_id in ids
            )
        for shipment_id, response in zip(ids, responses, strict=True):
            assert response.status_code == 200, response.text
            zip_of[shipment_id], partner_of[shipment_id] = other[zip_of[shipment_id]]
            assert response.json()["partner"]["id"] == partner_of[shipment_id]
            assert response.json()["destination"]["zip_code"] == zip_of[shipment_id]
        await counters_match_shipments(db_engine)
        assert await stored_active_shipments(db_engine, a["id"]) == 5
        assert await stored_active_shipments(db_engine, b["id"]) == 5

    for shipment_id in partner_of:
        events = await stored_events(db_engine, shipment_id)
        assert_gapless(events)
        assert len(events) == 1 + 4


async def test_corrections_into_a_full_partners_zip_race_creates_for_its_last_slots(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """B, the only partner of ZIP_B, has two free slots. Six corrections moving shipments
    from A into ZIP_B and six creates for ZIP_B arrive at once: exactly two of the twelve get
    a slot, the others are 409 `no_partner_available` (partners_full), and a refused
    correction changed nothing at all."""
    _, seller_headers = await account_with_token(client, "seller")
    a, _, b, _ = await two_zip_partners(client, capacity_b=3)
    await create_shipment(client, seller_headers, destination={"zip_code": ZIP_B})
    movers = [
        await create_shipment(client, seller_headers, destination={"zip_code": ZIP_A})
        for _ in range(6)
    ]
    rows_before = {s["id"]: await stored_shipment(db_engine, s["id"]) for s in movers}
    events_before = {s["id"]: await stored_events(db_engine, s["id"]) for s in movers}

    responses = await all_at_once(
        [
            *(correct(client, seller_headers, s["id"], new_zip(ZIP_B)) for s in movers),
            *(
                client.post(
                    "/shipments",
                    json=shipment_body(destination={"zip_code": ZIP_B}),
                    headers=seller_headers,
                )
                for _ in range(6)
            ),
        ]
    )

    assert sum(r.status_code in (200, 201) for r in responses) == 2, [r.text for r in responses]
    for response in responses:
        if response.status_code not in (200, 201):
            problem = assert_problem(response, 409, "no_partner_available")
            assert problem["reason"] == "partners_full"
    moved = 0
    for shipment, response in zip(movers, responses[:6], strict=True):
        if response.status_code == 200:
            moved += 1
            assert response.json()["partner"]["id"] == b["id"]
            continue
        assert await stored_shipment(db_engine, shipment["id"]) == rows_before[shipment["id"]]
        assert await stored_events(db_engine, shipment["id"]) == events_before[shipment["id"]]
    assert await stored_active_shipments(db_engine, b["id"]) == 3
    assert await stored_active_shipments(db_engine, a["id"]) == 6 - moved
    await counters_match_shipments(db_engine)


async def test_a_correction_racing_out_for_delivery_is_either_first_or_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Eight shipments in transit, each corrected (the recipient's name) while its partner
    sends it out for delivery: either the correction is recorded before the departure, or it
    is refused with 409 `delivery_details_locked`. The departure always lands."""
    parties = await make_parties(client, max_handling_capacity=10)
    shipments = await in_transit_shipments(client, parties, 8)
    requests: list[Awaitable[httpx.Response]] = []
    for index, shipment in enumerate(shipments):
        body = {"recipient": {"name": f"Grace Hopper {index}"}}
        requests.append(correct(client, parties.seller_headers, shipment["id"], body))
        requests.append(
            patch_shipment(
                client, parties.partner_headers, shipment["id"], status="out_for_delivery"
            )
        )

    responses = await all_at_once(requests)

    for index, shipment in enumerate(shipments):
        corrected, departed = responses[2 * index], responses[2 * index + 1]
        assert departed.status_code == 200, departed.text
        statuses = [status for _, status, _ in await stored_events(db_engine, shipment["id"])]
        stored = await stored_shipment(db_engine, shipment["id"])
        if corrected.status_code == 200:
            assert stored["recipient_name"] == f"Grace Hopper {index}"
            # The correction's event (in transit) comes before the departure's.
            assert statuses == ["placed", "in_transit", "in_transit", "out_for_delivery"]
        else:
            assert_problem(corrected, 409, "delivery_details_locked")
            assert stored["recipient_name"] == "Grace Hopper"
            assert statuses == ["placed", "in_transit", "out_for_delivery"]


async def test_a_reassigning_correction_racing_the_old_partners_reports(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Shipments in transit with A are moved to B's zip while A sends them out for delivery
    (or returns them, in a batch): for each, either the correction lands and A's report finds
    the shipment no longer A's (404), or A's report lands and the correction is refused (409).
    Never both, never neither; the counters stay exact."""
    _, seller_headers = await account_with_token(client, "seller")
    a, a_headers, b, _ = await two_zip_partners(client)
    shipments = []
    for _ in range(8):
        created = await create_shipment(client, seller_headers, destination={"zip_code": ZIP_A})
        moved = await patch_shipment(client, a_headers, created["id"], status="in_transit")
        assert moved.status_code == 200, moved.text
        shipments.append(moved.json())
    singles, batched = shipments[:4], shipments[4:]
    requests: list[Awaitable[httpx.Response]] = [
        *(correct(client, seller_headers, s["id"], new_zip(ZIP_B)) for s in shipments),
        *(patch_shipment(client, a_headers, s["id"], status="out_for_delivery") for s in singles),
        post_scans(
            client, a_headers, [scan(s, f"ret-{s['id']}", status="returned") for s in batched]
        ),
    ]

    responses = await all_at_once(requests)

    corrections, departures = responses[:8], responses[8:12]
    batch_results = results_of(responses[12])
    reports = [
        (departure.status_code, departure.json().get("code")) for departure in departures
    ] + [
        (
            200 if result["result"] == "accepted" else result["problem"]["status"],
            (result["problem"] or {}).get("code"),
        )
        for result in batch_results
    ]
    for shipment, corrected, report in zip(shipments, corrections, reports, strict=True):
        stored = await stored_shipment(db_engine, shipment["id"])
        if corrected.status_code == 200:
            assert report == (404, "shipment_not_found"), report
            assert (str(stored["partner_id"]), stored["destination_zip"]) == (b["id"], ZIP_B)
            assert stored["status"] == "in_transit"
        else:
            assert_problem(corrected, 409, "delivery_details_locked")
            assert report[0] == 200, report
            assert (str(stored["partner_id"]), stored["destination_zip"]) == (a["id"], ZIP_A)
            assert stored["status"] in ("out_for_delivery", "returned")
        assert_gapless(await stored_events(db_engine, shipment["id"]))
    await counters_match_shipments(db_engine)


@pytest.mark.parametrize("follower", ["cancel", "correction", "tags"])
async def test_a_sellers_change_queued_behind_a_reassigning_correction_still_finds_it(
    client: httpx.AsyncClient, db_engine: AsyncEngine, follower: str
) -> None:
    """The seller's cancel, second correction or tag change waits for the shipment's row while
    a correction moves it to another partner: once the correction commits, the waiting change
    must apply to the moved shipment. It is still the seller's own shipment: a 404 here says
    "not yours / does not exist" about a shipment the seller owns.

    Made deterministic by holding the shipment's row from a test connection until both
    requests queue on it, correction first."""
    _, seller_headers = await account_with_token(client, "seller")
    a, _, b, _ = await two_zip_partners(client)
    shipment = await create_shipment(client, seller_headers, destination={"zip_code": ZIP_A})
    url = f"/shipments/{shipment['id']}"
    follow: dict[str, Callable[[], Coroutine[Any, Any, httpx.Response]]] = {
        "cancel": lambda: client.post(f"{url}/cancel", headers=seller_headers),
        "correction": lambda: correct(
            client, seller_headers, shipment["id"], {"recipient": {"name": "Ada Lovelace"}}
        ),
        "tags": lambda: client.put(f"{url}/tags", json={"tags": ["moved"]}, headers=seller_headers),
    }

    async with db_engine.connect() as holder:
        await holder.execute(
            text("SELECT id FROM shipments WHERE id = :id FOR UPDATE"),
            {"id": uuid.UUID(shipment["id"])},
        )
        correction = asyncio.create_task(
            correct(client, seller_headers, shipment["id"], new_zip(ZIP_B))
        )
        await until_waiting_on_locks(db_engine, 1)
        follower_task = asyncio.create_task(follow[follower]())
        await until_waiting_on_locks(db_engine, 2)
        await holder.rollback()
        corrected, followed = await correction, await follower_task

    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["partner"]["id"] == b["id"]
    assert followed.status_code == 200, followed.text
    assert followed.json()["partner"]["id"] == b["id"]
    await counters_match_shipments(db_engine)
    assert await stored_active_shipments(db_engine, a["id"]) == 0
