"""Races settled by PostgreSQL: partner capacity, timeline sequences, If-Match, idempotency keys.

Every race here is real: `asyncio.gather` sends the requests at once over the ASGI client, each
request takes its own pooled connection, and they meet on PostgreSQL's row and key locks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterable
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.assertions import assert_problem
from tests.conftest import count_rows
from tests.factories import account_with_token
from tests.shipments.factories import (
    DESTINATION_ZIP,
    active_shipments,
    create_shipment,
    make_parties,
    shipment_body,
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
