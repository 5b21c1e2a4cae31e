"""The service's own statements are served by the indexes meant for them, on data where a wrong
plan would show: a dominant seller and a dominant partner among many, a few thousand rows.

Each test calls the API (or the repository), captures the statement the app sent with its
parameters, and reads PostgreSQL's plan for it (EXPLAIN (FORMAT JSON), the custom plan the first
executions of a prepared statement get). What is asserted is the shape that keeps a request's
cost flat as an owner's data grows: the page's range is an Index Cond of the owner's index, in
the index's order, never a walk through every shipment of the owner with a filter or a probe per
row. Bringing back the OR-form cursor, a subquery-probe tag filter, or dropping one of these
indexes fails here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.context import app_context
from backend.shipments.repository import ShipmentRepository
from tests.shipments.factories import Parties, create_shipment, make_parties

SHIPMENTS = 6000
OTHER_SELLERS = 50
OTHER_PARTNERS = 20
# Tags: "common" on every shipment; "elsewhere" only on shipments neither of the dominant
# seller nor of the dominant partner (present in the table, absent for them).
SEED = """
INSERT INTO sellers (id, name, email, password_hash, zip_code, created_at, updated_at)
SELECT md5('plan-seller' || n)::uuid, 'S', 'plan-seller' || n || '@example.com', 'x', '10001',
       now(), now()
FROM generate_series(1, :other_sellers) AS n;
INSERT INTO partners (id, name, email, password_hash, serviceable_zip_codes,
                      max_handling_capacity, status, created_at, updated_at)
SELECT md5('plan-partner' || n)::uuid, 'P', 'plan-partner' || n || '@example.com', 'x',
       ARRAY['9' || lpad(n::text, 4, '0')], 10, 'approved', now(), now()
FROM generate_series(1, :other_partners) AS n;
INSERT INTO shipments (id, tracking_number, seller_id, partner_id, status, content, weight_kg,
                       destination_zip, recipient_name, recipient_email, estimated_delivery,
                       version, last_sequence, delivery_code_attempts, created_at, updated_at)
SELECT md5('plan-shipment' || n)::uuid, 'PLAN' || lpad(n::text, 8, '0'),
       CASE WHEN n % 2 = 0 THEN CAST(:seller AS uuid)
            ELSE md5('plan-seller' || (1 + n % :other_sellers))::uuid END,
       CASE WHEN n % 3 = 0 THEN CAST(:partner AS uuid)
            ELSE md5('plan-partner' || (1 + n % :other_partners))::uuid END,
       CASE WHEN n % 97 = 0 THEN 'returned' ELSE 'delivered' END,
       'Parcel', 1.5, '02139', 'Grace Hopper', 'grace@example.com', now(), 1, 0, 0,
       timestamptz '2026-01-01' + n * interval '1 minute',
       timestamptz '2026-01-01' + n * interval '1 minute'
FROM generate_series(1, :shipments) AS n;
INSERT INTO tags (name) VALUES ('common'), ('elsewhere') ON CONFLICT DO NOTHING;
INSERT INTO shipment_tags (shipment_id, tag_id, seller_id, partner_id, created_at)
SELECT s.id, t.id, s.seller_id, s.partner_id, s.created_at
FROM shipments AS s JOIN tags AS t ON t.name = 'common'
  OR (t.name = 'elsewhere' AND s.seller_id <> CAST(:seller AS uuid)
      AND s.partner_id <> CAST(:partner AS uuid));
-- The feed: other sellers' events first, then the dominant seller's.
INSERT INTO events (id, seller_id, type, data, created_at)
SELECT gen_random_uuid(), md5('plan-seller' || (1 + n % :other_sellers))::uuid, 'webhook.test',
       '{}', now()
FROM generate_series(1, 2000) AS n ORDER BY n;
INSERT INTO events (id, seller_id, type, data, created_at)
SELECT gen_random_uuid(), CAST(:seller AS uuid), 'webhook.test', '{}', now()
FROM generate_series(1, 4000) AS n ORDER BY n;
-- The dominant seller's endpoint, with a delivery attempt per event of the seller's.
INSERT INTO webhook_endpoints (id, seller_id, url, secret, enabled, created_at)
VALUES (CAST(:endpoint AS uuid), CAST(:seller AS uuid), 'https://hooks.example.com/plan',
        'whsec_plan', true, now());
INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, attempt, succeeded,
                                status_code, duration_ms, created_at)
SELECT gen_random_uuid(), CAST(:endpoint AS uuid), e.id, e.type, 1, true, 200, 12,
       now() - e.position * interval '1 second'
FROM events AS e WHERE e.seller_id = CAST(:seller AS uuid);
"""
ANALYZED = (
    "sellers",
    "partners",
    "shipments",
    "tags",
    "shipment_tags",
    "events",
    "webhook_endpoints",
    "webhook_deliveries",
)
ENDPOINT_ID = "0d1e0000-0000-4000-8000-000000000001"
PLAN_ENDPOINT = f"/seller/webhooks/{ENDPOINT_ID}"


@dataclass(frozen=True, slots=True)
class Seeded:
    parties: Parties
    seller_id: str
    partner_id: str


class Statements:
    """(statement, parameters) the app's engine sent while recording."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def record(self, *args: Any) -> None:
        # before_cursor_execute(conn, cursor, statement, parameters, context, executemany)
        self.sent.append((args[2], args[3]))

    def one(self, *fragments: str) -> tuple[str, Any]:
        found = [(s, p) for s, p in self.sent if all(fragment in s for fragment in fragments)]
        assert len(found) == 1, [s for s, _ in self.sent]
        return found[0]


@pytest.fixture
def statements(app: FastAPI) -> Iterator[Statements]:
    log = Statements()
    engine = app_context(app).engine.sync_engine
    event.listen(engine, "before_cursor_execute", log.record)
    yield log
    event.remove(engine, "before_cursor_execute", log.record)


@pytest.fixture
async def seeded(client: httpx.AsyncClient, db_engine: AsyncEngine) -> Seeded:
    parties = await make_parties(client)
    seller_id, partner_id = parties.seller["id"], parties.partner["id"]
    parameters = {
        "seller": seller_id,
        "partner": partner_id,
        "shipments": SHIPMENTS,
        "other_sellers": OTHER_SELLERS,
        "other_partners": OTHER_PARTNERS,
        "endpoint": ENDPOINT_ID,
    }
    async with db_engine.begin() as connection:
        for statement in SEED.split(";\n"):
            if statement.strip():
                # Only the parameters each statement names.
                named = {k: v for k, v in parameters.items() if f":{k}" in statement}
                await connection.execute(text(statement), named)
    async with db_engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text(f"ANALYZE {', '.join(ANALYZED)}"))
    return Seeded(parties, seller_id, partner_id)


async def plan_of(
    engine: AsyncEngine, statement: str, parameters: Any, *settings: str
) -> dict[str, Any]:
    """The root node of EXPLAIN (FORMAT JSON) for the statement, with its own parameters."""
    async with engine.connect() as connection:
        for setting in settings:
            await connection.exec_driver_sql(f"SET LOCAL {setting}")
        result = await connection.exec_driver_sql(
            f"EXPLAIN (FORMAT JSON) {statement}", tuple(parameters or ())
        )
        raw = result.scalar_one()
        await connection.rollback()
    document = json.loads(raw) if isinstance(raw, str) else raw
    root: dict[str, Any] = document[0]["Plan"]
    return root


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def main_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The nodes that produce the rows, less subplans (a row's tag names are sorted in one)."""
    yield plan
    for child in plan.get("Plans", []):
        if child.get("Parent Relationship") not in ("SubPlan", "InitPlan"):
            yield from main_nodes(child)


def index_scans(plan: dict[str, Any], index: str) -> list[dict[str, Any]]:
    return [node for node in nodes(plan) if node.get("Index Name") == index]


def describe(plan: dict[str, Any]) -> str:
    return json.dumps(plan, indent=1)


async def page_statement(
    client: httpx.AsyncClient,
    statements: Statements,
    headers: dict[str, str],
    **params: str,
) -> tuple[str, Any]:
    """GET /shipments with `params`: the statement that read the page."""
    statements.sent.clear()
    response = await client.get("/shipments", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return statements.one("FROM shipments", "LIMIT")


def assert_driven_by(
    plan: dict[str, Any], index: str, *conditions: str, ordered: bool = True
) -> dict[str, Any]:
    """One scan of `index` whose Index Cond holds `conditions`, with no other scan of shipments
    by owner (no walk); when `ordered`, with no Sort either (the index gives the order)."""
    [scan] = index_scans(plan, index) or [{}]
    assert scan, describe(plan)
    for condition in conditions:
        assert condition in scan.get("Index Cond", ""), describe(scan)
    assert "Filter" not in scan, describe(scan)
    if ordered:
        sorts = [node for node in main_nodes(plan) if node["Node Type"] == "Sort"]
        assert not sorts, describe(plan)
    walks = {"ix_shipments_seller_mode_created", "ix_shipments_partner_created"} - {index}
    assert not [node for node in nodes(plan) if node.get("Index Name") in walks], describe(plan)
    return scan


async def test_a_deep_cursor_is_an_index_condition_for_sellers_and_partners(
    client: httpx.AsyncClient, db_engine: AsyncEngine, statements: Statements, seeded: Seeded
) -> None:
    owners = {
        "ix_shipments_seller_mode_created": seeded.parties.seller_headers,
        "ix_shipments_partner_created": seeded.parties.partner_headers,
    }
    for index, headers in owners.items():
        first = await client.get("/shipments", params={"limit": 100}, headers=headers)
        cursor = first.json()["next_cursor"]
        assert cursor is not None
        statement, parameters = await page_statement(
            client, statements, headers, limit="100", cursor=cursor
        )
        plan = await plan_of(db_engine, statement, parameters)
        # The row comparison is the range's lower end; an OR of two conditions on created_at
        # would be a Filter over every row of the owner newer than the cursor.
        scan = assert_driven_by(plan, index, "ROW(created_at, id) <")
        assert scan["Node Type"] == "Index Scan", describe(scan)
        assert scan["Scan Direction"] == "Backward", describe(scan)


async def test_a_deep_page_of_an_endpoints_deliveries_is_one_index_range(
    client: httpx.AsyncClient, db_engine: AsyncEngine, statements: Statements, seeded: Seeded
) -> None:
    headers = seeded.parties.seller_headers
    first = await client.get(f"{PLAN_ENDPOINT}/deliveries", params={"limit": 100}, headers=headers)
    assert first.status_code == 200, first.text
    cursor = first.json()["next_cursor"]
    assert cursor is not None

    statements.sent.clear()
    deeper = await client.get(
        f"{PLAN_ENDPOINT}/deliveries", params={"limit": 100, "cursor": cursor}, headers=headers
    )
    assert deeper.status_code == 200, deeper.text
    statement, parameters = statements.one("FROM webhook_deliveries", "LIMIT")
    plan = await plan_of(db_engine, statement, parameters)

    scan = assert_driven_by(
        plan, "ix_webhook_deliveries_endpoint_created_id", "endpoint_id =", "ROW(created_at, id) <"
    )
    assert scan["Scan Direction"] == "Backward", describe(scan)


@pytest.mark.parametrize("tag", ["common", "elsewhere", "never-used"])
async def test_tag_filtered_pages_read_the_owners_links_to_the_tag(
    client: httpx.AsyncClient,
    db_engine: AsyncEngine,
    statements: Statements,
    seeded: Seeded,
    tag: str,
) -> None:
    owners = {
        "ix_shipment_tags_seller_mode_tag_created": seeded.parties.seller_headers,
        "ix_shipment_tags_partner_tag_created": seeded.parties.partner_headers,
    }
    for index, headers in owners.items():
        first = await client.get("/shipments", params={"tag": tag}, headers=headers)
        assert first.status_code == 200, first.text
        assert bool(first.json()["items"]) == (tag == "common")
        statement, parameters = await page_statement(client, statements, headers, tag=tag)
        plan = await plan_of(db_engine, statement, parameters)
        owner = "partner_id" if "partner" in index else "seller_id"
        assert_driven_by(plan, index, f"({owner} = ", "(tag_id = ")

        if tag == "common":
            cursor = first.json()["next_cursor"]
            statement, parameters = await page_statement(
                client, statements, headers, tag=tag, cursor=cursor
            )
            plan = await plan_of(db_engine, statement, parameters)
            assert_driven_by(plan, index, "(tag_id = ", "ROW(created_at, shipment_id) <")


# Rare ("returned": 1% of the rows) and absent ("cancelled"): a walk through the owner's
# shipments filtering on status would read them all. (For a common status such a walk is the
# planner's right choice, and stops after about a page.)
@pytest.mark.parametrize("status", ["returned", "cancelled"])
async def test_status_filtered_pages_are_one_range_of_the_owners_status_index(
    client: httpx.AsyncClient,
    db_engine: AsyncEngine,
    statements: Statements,
    seeded: Seeded,
    status: str,
) -> None:
    owners = {
        "ix_shipments_seller_mode_status_created": seeded.parties.seller_headers,
        "ix_shipments_partner_status_created": seeded.parties.partner_headers,
    }
    for index, headers in owners.items():
        statement, parameters = await page_statement(client, statements, headers, status=status)
        plan = await plan_of(db_engine, statement, parameters)
        # The range may be read in order or, this small, collected and sorted: either way only
        # the owner's shipments in that status are read.
        assert_driven_by(plan, index, f"'{status}'", ordered=False)


async def test_a_reference_filtered_page_is_one_range_of_the_sellers_reference_index(
    client: httpx.AsyncClient, db_engine: AsyncEngine, statements: Statements, seeded: Seeded
) -> None:
    headers = seeded.parties.seller_headers
    statement, parameters = await page_statement(client, statements, headers, reference="none")
    plan = await plan_of(db_engine, statement, parameters)
    assert_driven_by(
        plan, "ix_shipments_seller_mode_reference_created", "(reference)::text =", ordered=False
    )


async def test_a_sellers_feed_reads_its_own_events_in_order(
    client: httpx.AsyncClient, db_engine: AsyncEngine, statements: Statements, seeded: Seeded
) -> None:
    statements.sent.clear()
    response = await client.get("/events", headers=seeded.parties.seller_headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 20
    statement, parameters = statements.one("FROM events", "LIMIT")

    plan = await plan_of(db_engine, statement, parameters)

    [scan] = index_scans(plan, "ix_events_seller_mode_transaction_position") or [{}]
    assert "seller_id = " in scan.get("Index Cond", ""), describe(plan)
    assert "Filter" not in scan, describe(scan)
    assert not [node for node in main_nodes(plan) if node["Node Type"] == "Sort"], describe(plan)


async def test_assignment_can_find_partners_by_zip_through_the_gin_index(
    client: httpx.AsyncClient, db_engine: AsyncEngine, statements: Statements, seeded: Seeded
) -> None:
    statements.sent.clear()
    await create_shipment(client, seeded.parties.seller_headers)
    statement, parameters = statements.one("FROM partners", "FOR KEY SHARE SKIP LOCKED")

    # Twenty-odd partners fit in a page, where a sequential scan is the right plan; the point
    # here is that the choice's zip condition CAN use the index (`zip = ANY(column)` cannot).
    plan = await plan_of(db_engine, statement, parameters, "enable_seqscan = off")

    scans = index_scans(plan, "ix_partners_serviceable_zip_codes")
    assert scans, describe(plan)
    assert all("@>" in scan["Index Cond"] for scan in scans), describe(plan)


async def test_the_expiry_sweep_uses_the_partial_index_even_in_a_generic_plan(
    app: FastAPI, db_engine: AsyncEngine, statements: Statements, seeded: Seeded
) -> None:
    sessionmaker: async_sessionmaker[AsyncSession] = app_context(app).sessionmaker
    statements.sent.clear()
    async with sessionmaker() as session:
        cutoff = datetime.now(UTC) - timedelta(hours=72)
        await ShipmentRepository(session).lock_expired_placed(cutoff, 20)
        await session.rollback()
    statement, parameters = statements.one("FROM shipments", "FOR UPDATE")

    # A prepared statement may run on a generic plan (after five executions), where a bound
    # parameter's value is unknown: only a literal 'placed' proves the index's predicate then.
    name = f"expiry_{uuid.uuid4().hex[:8]}"
    values = ", ".join(sql_literal(value) for value in parameters)
    async with db_engine.connect() as connection:
        await connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        await connection.exec_driver_sql(f"PREPARE {name} AS {statement}")
        result = await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) EXECUTE {name}({values})")
        raw = result.scalar_one()
        await connection.rollback()
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]

    assert index_scans(plan, "ix_shipments_placed_created"), describe(plan)


def sql_literal(value: Any) -> str:
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"
