"""After a fault: is everything the clients were told still true, and is the data consistent?

`check_invariants` reads the database directly (not through the app) and lists every violation:
- every acknowledged shipment exists, at least at its acknowledged version, with the acknowledged
  timeline as a prefix of the stored one; a newer version only where a write went unanswered;
- every timeline is 1..n without gap or duplicate, n = the shipment's version and last sequence;
- every timeline event has exactly one feed event (plus `shipment.cancelled` / `.delivered`
  where due), and every feed event of a seller with a webhook endpoint one queued delivery;
- every shipment has its creation email, one delivery-code email per time it went out for
  delivery and one delivered email per delivery (no outbox row lost, none duplicated);
- every partner's active_shipments equals its non-terminal shipments and stays within capacity;
- every acknowledged sign-up exists, and every token whose logout was acknowledged gets a 401;
- every acknowledged scan is stored once, as the event its result named; no scan was refused
  but for a conflict the load expects.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults.records import Ledger

TERMINAL = {"delivered", "cancelled", "returned"}
EMAIL_FOR_STATUS = {"out_for_delivery": "delivery_code", "delivered": "delivered"}


async def _rows(engine: AsyncEngine, query: str) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(query))).all())


async def check_invariants(
    engine: AsyncEngine, ledger: Ledger, http: httpx.AsyncClient | None = None
) -> None:
    """Assert every invariant above; `http` (the app, healthy) is needed to try revoked tokens."""
    problems: list[str] = []
    shipments = {
        str(row.id): row
        for row in await _rows(
            engine,
            "SELECT id, seller_id, partner_id, status, version, last_sequence FROM shipments",
        )
    }
    timelines: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in await _rows(
        engine, "SELECT shipment_id, sequence, status FROM shipment_events ORDER BY sequence"
    ):
        timelines[str(row.shipment_id)].append((row.sequence, row.status))

    problems += _acknowledged_shipments(ledger, shipments, timelines)
    problems += _gapless_timelines(shipments, timelines)
    problems += await _events_and_outbox(engine, shipments, timelines)
    problems += await _capacities(engine, shipments)
    problems += await _accounts(engine, ledger)
    problems += await _scans(engine, ledger)
    if ledger.revoked:
        assert http is not None, "revoked tokens can only be tried over HTTP"
        for kind, headers in ledger.revoked:
            response = await http.get(f"/{kind}/me", headers=headers)
            if response.status_code != 401:
                problems.append(f"a {kind} token revoked by an acknowledged logout got {response}")

    assert not problems, f"{len(problems)} invariant violations:\n" + "\n".join(problems[:50])


async def _scans(engine: AsyncEngine, ledger: Ledger) -> list[str]:
    stored: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for row in await _rows(
        engine,
        "SELECT scan_id, shipment_id, sequence FROM shipment_events WHERE scan_id IS NOT NULL",
    ):
        stored[row.scan_id].append((str(row.shipment_id), row.sequence))
    problems = [f"unexpected scan refusal {refusal}" for refusal in ledger.refused_scans]
    for scan_id, acknowledged in ledger.scans.items():
        if stored.get(scan_id) != [acknowledged]:
            problems.append(
                f"scan {scan_id} acknowledged as {acknowledged}, stored as {stored.get(scan_id)}"
            )
    return problems


def _acknowledged_shipments(
    ledger: Ledger, shipments: dict[str, Any], timelines: dict[str, list[tuple[int, str]]]
) -> list[str]:
    problems = []
    for shipment_id, record in ledger.shipments.items():
        acked = record.acked
        if acked is None:
            continue  # only unanswered writes: nothing was promised
        stored = shipments.get(shipment_id)
        if stored is None:
            problems.append(f"acknowledged shipment {shipment_id} is missing")
            continue
        extra = stored.version - acked["version"]
        if extra < 0:
            problems.append(
                f"{shipment_id}: stored version {stored.version} is older than the acknowledged "
                f"{acked['version']}"
            )
        elif extra == 0 and stored.status != acked["status"]:
            problems.append(
                f"{shipment_id}: stored status {stored.status}, acknowledged {acked['status']}"
            )
        elif extra > record.ambiguous + record.unviewed:
            problems.append(
                f"{shipment_id}: {extra} changes beyond the acknowledged version, but only "
                f"{record.ambiguous} writes went unanswered and {record.unviewed} scans were "
                "acknowledged without a view"
            )
        promised = [(event["sequence"], event["status"]) for event in acked["timeline"]]
        if timelines[shipment_id][: len(promised)] != promised:
            problems.append(
                f"{shipment_id}: acknowledged timeline {promised} is not a prefix of the stored "
                f"{timelines[shipment_id]}"
            )
    return problems


def _gapless_timelines(
    shipments: dict[str, Any], timelines: dict[str, list[tuple[int, str]]]
) -> list[str]:
    problems = []
    for shipment_id, stored in shipments.items():
        sequences = [sequence for sequence, _ in timelines[shipment_id]]
        if sequences != list(range(1, len(sequences) + 1)):
            problems.append(f"{shipment_id}: timeline sequences {sequences} are not 1..n")
        # No tags are replaced under this load, so every version is one timeline event.
        if not len(sequences) == stored.last_sequence == stored.version:
            problems.append(
                f"{shipment_id}: {len(sequences)} events, last_sequence {stored.last_sequence}, "
                f"version {stored.version}"
            )
        if timelines[shipment_id] and timelines[shipment_id][-1][1] != stored.status:
            problems.append(
                f"{shipment_id}: status {stored.status} but last event {timelines[shipment_id][-1]}"
            )
    return problems


async def _events_and_outbox(
    engine: AsyncEngine, shipments: dict[str, Any], timelines: dict[str, list[tuple[int, str]]]
) -> list[str]:
    problems = []
    events = await _rows(
        engine,
        "SELECT id, seller_id, shipment_id, type,"
        " (data -> 'timeline_event' ->> 'sequence')::int AS sequence FROM events",
    )
    hooked_sellers = {
        str(row.seller_id) for row in await _rows(engine, "SELECT seller_id FROM webhook_endpoints")
    }
    outbox = await _rows(
        engine,
        "SELECT kind, shipment_id, payload ->> 'template' AS template,"
        " payload ->> 'event_id' AS event_id FROM outbox_messages",
    )
    feed: Counter[tuple[str, int, str]] = Counter(
        (str(e.shipment_id), e.sequence, e.type) for e in events if e.shipment_id is not None
    )
    deliveries = Counter(row.event_id for row in outbox if row.kind == "webhook")
    emails = Counter((str(row.shipment_id), row.template) for row in outbox if row.kind == "email")

    for shipment_id in shipments:
        for sequence, status in timelines[shipment_id]:
            expected = {"shipment.created" if sequence == 1 else "shipment.updated": 1}
            if status == "cancelled":
                expected["shipment.cancelled"] = 1
            if status == "delivered":
                expected["shipment.delivered"] = 1
            for event_type in ("shipment.created", "shipment.updated", "shipment.cancelled",
                               "shipment.delivered"):  # fmt: skip
                found = feed[(shipment_id, sequence, event_type)]
                if found != expected.get(event_type, 0):
                    problems.append(
                        f"{shipment_id} #{sequence} ({status}): {found} {event_type} events, "
                        f"expected {expected.get(event_type, 0)}"
                    )
        statuses = Counter(status for _, status in timelines[shipment_id])
        expected_emails = {"shipment_created": 1} | {
            template: statuses[status] for status, template in EMAIL_FOR_STATUS.items()
        }
        for template, count in expected_emails.items():
            if emails[(shipment_id, template)] != count:
                problems.append(
                    f"{shipment_id}: {emails[(shipment_id, template)]} {template} emails in the "
                    f"outbox, expected {count}"
                )

    for event in events:
        wanted = 1 if str(event.seller_id) in hooked_sellers else 0
        if deliveries[str(event.id)] != wanted:
            problems.append(
                f"event {event.id} ({event.type}): {deliveries[str(event.id)]} webhook deliveries "
                f"queued, expected {wanted}"
            )
    return problems


async def _capacities(engine: AsyncEngine, shipments: dict[str, Any]) -> list[str]:
    problems = []
    active = Counter(str(s.partner_id) for s in shipments.values() if s.status not in TERMINAL)
    for partner in await _rows(
        engine, "SELECT id, active_shipments, max_handling_capacity FROM partners"
    ):
        counted = active[str(partner.id)]
        if partner.active_shipments != counted:
            problems.append(
                f"partner {partner.id}: active_shipments {partner.active_shipments}, "
                f"but {counted} non-terminal shipments"
            )
        if counted > partner.max_handling_capacity:
            problems.append(
                f"partner {partner.id}: {counted} active shipments over its capacity "
                f"{partner.max_handling_capacity}"
            )
    return problems


async def _accounts(engine: AsyncEngine, ledger: Ledger) -> list[str]:
    stored = {
        str(row.id)
        for row in await _rows(engine, "SELECT id FROM sellers UNION ALL SELECT id FROM partners")
    }
    return [
        f"acknowledged {kind} sign-up {account_id} is missing"
        for account_id, kind in ledger.accounts.items()
        if account_id not in stored
    ]
