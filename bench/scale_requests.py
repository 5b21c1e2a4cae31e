"""The requests of the scale benchmark (bench/scale.sh), for one seeded database.

Usage: DATABASE_URL=... python bench/scale_requests.py API_URL OUT_DIR

The database is built by bench/plans_seed.sql: seller 1 owns 40 % of the shipments, partner 1
carries 25 %. Gives both a known password, logs them in through the API, and writes into OUT_DIR
their tokens (`seller_token`, `partner_token`), one file of GET paths per read workload (for
bench/get.lua), and the create and status-update inputs (for bench/create.lua and update.lua).
The same queries pick the same kind of rows at any size: ids spread over the whole history, a
cursor half-way down the seller's list, feed positions half-way through its events.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from backend.accounts.passwords import PasswordHasher
from backend.pagination import encode_cursor

PASSWORD = "scale-bench-password"  # noqa: S105 - a scratch database's accounts
SELLER = "seller1@example.com"
PARTNER = "partner1@example.com"
SAMPLE = 1000  # ids and tracking numbers each read workload cycles over
UPDATE_SHIPMENTS = 300
CREATE_ZIP = "00020"  # served by partner 1 and others (the seed's zip plan)


async def rows(connection: AsyncConnection, sql: str, **parameters: object) -> list[tuple]:
    return [tuple(row) for row in await connection.execute(text(sql), parameters)]


async def set_passwords(connection: AsyncConnection) -> None:
    # A low cost: logging in is not measured here, only what the tokens then do.
    hasher = PasswordHasher(rounds=4, concurrency=1, queue_limit=1)
    password_hash = await hasher.hash(PASSWORD)
    hasher.close()
    for table, email in (("sellers", SELLER), ("partners", PARTNER)):
        await connection.execute(
            text(f"UPDATE {table} SET password_hash = :hash WHERE email = :email"),  # noqa: S608
            {"hash": password_hash, "email": email},
        )


def log_in(http: httpx.Client, kind: str, email: str) -> str:
    response = http.post(f"/{kind}/token", data={"username": email, "password": PASSWORD})
    response.raise_for_status()
    return str(response.json()["access_token"])


async def read_paths(connection: AsyncConnection) -> dict[str, list[str]]:
    (seller_id,) = (await rows(connection, "SELECT id FROM sellers WHERE email = :e", e=SELLER))[0]
    owned = "FROM shipments WHERE seller_id = :seller"
    ids = await rows(
        connection, f"SELECT id {owned} ORDER BY random() LIMIT :n", seller=seller_id, n=SAMPLE
    )
    numbers = await rows(
        connection, "SELECT tracking_number FROM shipments ORDER BY random() LIMIT :n", n=SAMPLE
    )
    (total,) = (await rows(connection, f"SELECT count(*) {owned}", seller=seller_id))[0]
    created_at, middle_id = (
        await rows(
            connection,
            f"SELECT created_at, id {owned} ORDER BY created_at DESC, id DESC OFFSET :half LIMIT 1",
            seller=seller_id,
            half=total // 2,
        )
    )[0]
    events = await rows(
        connection,
        "SELECT id FROM events WHERE seller_id = :seller ORDER BY transaction_id, position",
        seller=seller_id,
    )
    middle_events = events[len(events) // 2 - SAMPLE // 2 : len(events) // 2 + SAMPLE // 2]
    cursor = encode_cursor(created_at, middle_id)
    return {
        "read_one": [f"/shipments/{shipment_id}" for (shipment_id,) in ids],
        "track": [f"/track/{number}" for (number,) in numbers],
        "first_page": ["/shipments?limit=20"],
        "first_page_bare": ["/shipments?limit=20&include="],
        "deep_page": [f"/shipments?limit=20&cursor={cursor}"],
        "tag_absent": ["/shipments?limit=20&tag=vip"],
        "tag_present": ["/shipments?limit=20&tag=tag-5"],
        "status_cancelled": ["/shipments?limit=20&status=cancelled"],
        "events_first": ["/events?limit=20"],
        "events_after": [f"/events?limit=20&after={event_id}" for (event_id,) in middle_events],
        "partner_first_page": ["/shipments?limit=20"],
        "partner_deep_page": [f"/shipments?limit=20&cursor={cursor}"],
    }


async def main() -> None:
    api_url, out = sys.argv[1], Path(sys.argv[2])
    engine = create_async_engine(os.environ["DATABASE_URL"])
    async with engine.begin() as connection:
        await set_passwords(connection)
        paths = await read_paths(connection)
        update_ids = await rows(
            connection,
            "SELECT s.id FROM shipments AS s JOIN partners AS p ON p.id = s.partner_id "
            "WHERE p.email = :partner AND s.status IN ('placed', 'in_transit') "
            "ORDER BY s.created_at DESC LIMIT :n",
            partner=PARTNER,
            n=UPDATE_SHIPMENTS,
        )
    await engine.dispose()
    with httpx.Client(base_url=api_url, timeout=30) as http:
        (out / "seller_token").write_text(log_in(http, "seller", SELLER))
        (out / "partner_token").write_text(log_in(http, "partner", PARTNER))
    for name, lines in paths.items():
        (out / f"{name}.paths").write_text("\n".join(lines) + "\n")
    (out / "update_ids").write_text("\n".join(str(shipment_id) for (shipment_id,) in update_ids))
    (out / "update_body.json").write_text(
        json.dumps({"status": "in_transit", "location_zip": CREATE_ZIP})
    )
    (out / "create_body.json").write_text(
        json.dumps(
            {
                "content": "Scale bench parcel",
                "weight_kg": 1.5,
                "destination": {"zip_code": CREATE_ZIP, "city": "Boston", "address_line": "1 St"},
                "recipient": {"name": "Grace Hopper", "email": "grace@example.com"},
                "tags": ["bench", "books"],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
