"""EXPLAIN (ANALYZE, BUFFERS) of the service's own statements on issue 14's plans database.

Usage: DATABASE_URL=postgresql+asyncpg://.../<db> python bench/plans.py [CASE ...]
The database is migrated and seeded by bench/plans_seed.sql. Each case calls the service's code
(the repository, the feed, the outbox claim) in a transaction that is rolled back, captures the
statements it sends, with their parameters, and runs each again under EXPLAIN (ANALYZE,
BUFFERS), also rolled back. Prints each case's statements and plans.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from backend.accounts.models import Seller
from backend.outbox.models import EMAIL_LANE
from backend.outbox.outbox import OutboxClaims
from backend.shipments.assignment import PartnerAssignment
from backend.shipments.repository import ShipmentRepository, Visibility
from backend.shipments.status import ShipmentStatus
from backend.webhooks.service import WebhookService


def md5_uuid(value: str) -> uuid.UUID:
    return uuid.UUID(hashlib.md5(value.encode()).hexdigest())  # noqa: S324 - the seed's ids


BIG_SELLER = md5_uuid("seller1")
BIG_PARTNER = md5_uuid("partner1")
# Shipment 150,000 belongs to both (n % 5 = 0, n % 4 = 0): a cursor 100,000 rows deep for the
# partner's list and 40,000 deep for the seller's.
DEEP_ID = md5_uuid("shipment150000")
DEEP_AT = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=150000)
DEEP_TRACKING_NUMBER = "T000000150000"
DEEP_FEED_EVENT = md5_uuid("feed150000")

Call = Callable[[AsyncSession], Awaitable[Any]]


def page(visibility: Visibility, **filters: Any) -> Call:
    def call(session: AsyncSession) -> Awaitable[Any]:
        arguments: dict[str, Any] = {"limit": 21, "after": None, "status": None, "tag": None}
        return ShipmentRepository(session).page(visibility, **{**arguments, **filters})

    return call


def feed(after: uuid.UUID | None) -> Call:
    def call(session: AsyncSession) -> Awaitable[Any]:
        seller = Seller(id=BIG_SELLER, name="", email="", password_hash="", zip_code="")
        service = WebhookService(session, None)  # type: ignore[arg-type]
        return service.feed(seller, after=after, limit=20)

    return call


def read_one(session: AsyncSession) -> Awaitable[Any]:
    return ShipmentRepository(session).get(DEEP_ID, SELLER)


def track(session: AsyncSession) -> Awaitable[Any]:
    return ShipmentRepository(session).by_tracking_number(DEEP_TRACKING_NUMBER, recent_events=True)


async def assign_partner(session: AsyncSession) -> bool:
    """A create's two assignment statements: the choice, then (last) the slot."""
    assignment = PartnerAssignment(session)
    chosen = await assignment.choose("00020")
    assert chosen is not None, "the seed's partners serve 00020"
    return await assignment.take_slot(chosen.id)


def expiry(session: AsyncSession) -> Awaitable[Any]:
    return ShipmentRepository(session).lock_expired_placed(datetime.now(UTC), 20)


async def outbox_claim(session: AsyncSession) -> Any:
    await session.rollback()  # OutboxClaims opens its own transaction
    return await OutboxClaims(session, "bench").claim(20, 60, lane=EMAIL_LANE)


SELLER = Visibility(seller_id=BIG_SELLER)
PARTNER = Visibility(partner_id=BIG_PARTNER)
CASES: dict[str, Call] = {
    "read_one": read_one,
    "track": track,
    "seller_first_page": page(SELLER),
    "seller_deep_page": page(SELLER, after=(DEEP_AT, DEEP_ID)),
    "partner_deep_page": page(PARTNER, after=(DEEP_AT, DEEP_ID)),
    "seller_tag_absent": page(SELLER, tag="vip"),
    "seller_tag_common": page(SELLER, tag="tag-5"),
    "seller_tag_deep": page(SELLER, tag="tag-5", after=(DEEP_AT, DEEP_ID)),
    "partner_tag_absent": page(PARTNER, tag="vip"),
    "seller_status_rare": page(SELLER, status=ShipmentStatus.returned),
    "seller_status_recent": page(SELLER, status=ShipmentStatus.in_transit),
    "partner_status_rare": page(PARTNER, status=ShipmentStatus.returned),
    "events_feed": feed(after=None),
    "events_feed_after": feed(after=DEEP_FEED_EVENT),
    "assign_partner": assign_partner,
    "expiry_sweep": expiry,
    "outbox_claim": outbox_claim,
}
# Not a statement of the service's: what deleting one shipment costs in foreign-key checks.
DELETE_ONE = f"DELETE FROM shipments WHERE id = '{DEEP_ID}'"  # noqa: S608 - a constant uuid


def _is_transaction_control(statement: str) -> bool:
    return statement.lstrip().upper().startswith(("BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK"))


async def _explain(engine: AsyncEngine, statement: str, parameters: Any) -> str:
    """EXPLAIN (ANALYZE, BUFFERS), in a transaction rolled back: a write changes nothing."""
    async with engine.connect() as connection:
        explain = f"EXPLAIN (ANALYZE, BUFFERS) {statement}"
        rows = await connection.exec_driver_sql(explain, tuple(parameters or ()))
        plan = "\n".join(row[0] for row in rows)
        await connection.rollback()
    return plan


async def main() -> None:
    engine = create_async_engine(os.environ["DATABASE_URL"])
    captured: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        captured.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    names = sys.argv[1:] or [*CASES, "delete_shipment"]
    for name in names:
        captured.clear()
        if name == "delete_shipment":
            statements = [(DELETE_ONE, ())]
        else:
            async with AsyncSession(engine) as session:
                await CASES[name](session)
                await session.rollback()
            statements = [(s, p) for s, p in captured if not _is_transaction_control(s)]
        sys.stdout.write(f"### {name}\n\n")
        for statement, parameters in statements:
            plan = await _explain(engine, statement, parameters)
            sys.stdout.write(f"```sql\n{statement.strip()}\n-- {parameters}\n```\n\n")
            sys.stdout.write(f"```\n{plan}\n```\n\n")
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
