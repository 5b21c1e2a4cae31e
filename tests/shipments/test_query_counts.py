"""Reading shipments costs a constant number of queries, whatever the page or timeline size.

The caller's account by primary key, one query for the shipments (their partner's name, tags
and review in the same rows), and one for all their timelines (`Shipment.timeline`,
`lazy="selectin"`): a page of 20 shipments with 10 events and 2 tags each costs what one
shipment does, three queries in all.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import StatementLog
from tests.shipments.factories import Parties, create_shipment, make_parties

EVENTS_PER_SHIPMENT = 10
# The caller's account by primary key, the shipments, and their timelines.
MAX_QUERIES = 3


async def shipments_with_long_timelines(
    client: httpx.AsyncClient, parties: Parties, count: int
) -> list[str]:
    """`count` new shipments, each with two tags and EVENTS_PER_SHIPMENT timeline events."""

    async def one() -> str:
        shipment = await create_shipment(client, parties.seller_headers, tags=["books", "gift"])
        url = f"/shipments/{shipment['id']}"
        scans = [{"status": "in_transit"}] + [
            {"status": "in_transit", "location_zip": f"9{index:04d}"}
            for index in range(EVENTS_PER_SHIPMENT - 2)
        ]
        for scan in scans:
            response = await client.patch(url, json=scan, headers=parties.partner_headers)
            assert response.status_code == 200, response.text
        shipment_id: str = shipment["id"]
        return shipment_id

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def measured_get(
    client: httpx.AsyncClient,
    sql_log: StatementLog,
    url: str,
    headers: dict[str, str],
    params: dict[str, str | int] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The JSON body of GET `url` and the queries the app ran to answer it."""
    sql_log.statements.clear()
    response = await client.get(url, headers=headers, params=params)
    queries = sql_log.queries()
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body, queries


def assert_lean(queries: list[str], account_table: str) -> None:
    """Three queries: the caller's account by primary key, the shipments, their timelines."""
    assert len(queries) == MAX_QUERIES, "\n".join(queries)
    assert len(set(queries)) == len(queries), "\n".join(queries)
    account, shipments, timelines = queries
    assert f"FROM {account_table}" in account
    assert f"WHERE {account_table}.id = " in account
    assert "FROM shipments" in shipments
    assert "FROM shipment_events" in timelines
    assert "shipment_events.shipment_id IN" in timelines  # every shipment's at once
    assert all(f"FROM {account_table} " not in query for query in queries[1:]), queries


def assert_full_shipment(shipment: dict[str, Any]) -> None:
    assert shipment["tags"] == ["books", "gift"]
    assert [event["sequence"] for event in shipment["timeline"]] == list(
        range(1, EVENTS_PER_SHIPMENT + 1)
    )


async def test_one_shipment_and_pages_of_one_and_twenty_cost_the_same_queries(
    client: httpx.AsyncClient, sql_log: StatementLog
) -> None:
    parties = await make_parties(client, max_handling_capacity=25)
    readers = {
        "sellers": parties.seller_headers,
        "partners": parties.partner_headers,
    }
    [first_id] = await shipments_with_long_timelines(client, parties, 1)

    counts: dict[tuple[str, str], int] = {}
    for table, headers in readers.items():
        shipment, queries = await measured_get(client, sql_log, f"/shipments/{first_id}", headers)
        assert_full_shipment(shipment)
        assert_lean(queries, table)
        counts[table, "one"] = len(queries)

        page, queries = await measured_get(client, sql_log, "/shipments", headers, {"limit": 20})
        assert [item["id"] for item in page["items"]] == [first_id]
        assert_full_shipment(page["items"][0])
        assert_lean(queries, table)
        counts[table, "page of 1"] = len(queries)

    await shipments_with_long_timelines(client, parties, 19)

    for table, headers in readers.items():
        page, queries = await measured_get(client, sql_log, "/shipments", headers, {"limit": 20})
        assert len(page["items"]) == 20
        assert page["next_cursor"] is None
        for item in page["items"]:
            assert_full_shipment(item)
        assert_lean(queries, table)
        counts[table, "page of 20"] = len(queries)

    # One constant for every read, for both kinds of account.
    assert len(set(counts.values())) == 1, counts


async def test_a_full_page_with_more_to_come_costs_the_same(
    client: httpx.AsyncClient, sql_log: StatementLog
) -> None:
    parties = await make_parties(client, max_handling_capacity=25)
    await shipments_with_long_timelines(client, parties, 3)
    _, baseline = await measured_get(
        client, sql_log, "/shipments", parties.seller_headers, {"limit": 1}
    )

    page, queries = await measured_get(
        client, sql_log, "/shipments", parties.partner_headers, {"limit": 2}
    )

    assert len(page["items"]) == 2
    assert page["next_cursor"] is not None
    assert_lean(queries, "partners")
    assert len(queries) == len(baseline)
    follow, queries = await measured_get(
        client,
        sql_log,
        "/shipments",
        parties.seller_headers,
        {"limit": 2, "cursor": page["next_cursor"]},
    )
    assert len(follow["items"]) == 1
    assert_lean(queries, "sellers")
    assert len(queries) == len(baseline)


async def test_public_tracking_costs_the_same_queries_for_short_and_long_timelines(
    client: httpx.AsyncClient, sql_log: StatementLog
) -> None:
    """The shipment with its partner, then its newest 50 events: two queries, even for a
    timeline far longer than what the public sees."""
    parties = await make_parties(client)
    queries_by_notes: dict[int, list[str]] = {}
    for notes in (1, 80):
        shipment = await create_shipment(client, parties.seller_headers)
        for index in range(notes):
            response = await client.patch(
                f"/shipments/{shipment['id']}",
                json={"note": f"Note {index}"},
                headers=parties.partner_headers,
            )
            assert response.status_code == 200, response.text
        number = shipment["tracking_number"]
        for path in (f"/track/{number}", f"/t/{number}"):
            sql_log.statements.clear()
            response = await client.get(path)
            assert response.status_code == 200, response.text
            queries_by_notes.setdefault(notes, []).extend(sql_log.queries())

    # Two queries per view, for either timeline.
    assert len(queries_by_notes[1]) == len(queries_by_notes[80]) == 4, queries_by_notes


async def test_a_page_without_timelines_loads_no_events(
    client: httpx.AsyncClient, sql_log: StatementLog
) -> None:
    """`include=` leaves the timelines out of a list: a seller's page is then two queries (no
    events read at all), a partner's loads only each shipment's newest event (when it ended
    dates the partner's view of the recipient), and every other field is as in the full page."""
    parties = await make_parties(client, max_handling_capacity=25)
    await shipments_with_long_timelines(client, parties, 3)
    without: dict[str, str | int] = {"limit": 20, "include": ""}

    for table, headers in (
        ("sellers", parties.seller_headers),
        ("partners", parties.partner_headers),
    ):
        full, _ = await measured_get(client, sql_log, "/shipments", headers, {"limit": 20})
        page, queries = await measured_get(client, sql_log, "/shipments", headers, without)

        assert [item["timeline"] for item in page["items"]] == [None, None, None]
        assert [{**item, "timeline": None} for item in full["items"]] == page["items"]
        if table == "sellers":
            assert len(queries) == 2, "\n".join(queries)
            assert all("shipment_events" not in query for query in queries), queries
        else:
            assert len(queries) == 3, "\n".join(queries)
            newest_events = queries[2]
            assert "FROM shipments AS" in newest_events  # joined: each shipment's newest only
            assert ".last_sequence" in newest_events, newest_events
        explicit, _ = await measured_get(
            client, sql_log, "/shipments", headers, {"limit": 20, "include": "timeline"}
        )
        assert explicit == full
