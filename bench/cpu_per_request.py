"""CPU per request of the hot workloads, in process, for comparing one commit with another.

Creates a scratch database on PostgreSQL 127.0.0.1:5432 (user postgres), migrates it, seeds a
seller, a partner and three shipments of ten events through the API, then sends each workload's
requests one after another to the app's ASGI callable (httpx's ASGITransport: no server, no
load generator) and prints the user and system CPU per request (client included) from
`getrusage`. Drops the database at the end. Sequential on purpose: the figure is CPU, not
throughput, and moves much less with the host's load than wrk's req/s.

Usage, from a checkout's root: .venv/bin/python bench/cpu_per_request.py [read read_key list track
create] (`read_key` is `read` with an API key instead of the access token)
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx

os.environ.setdefault("ENVIRONMENT", "dev")

from backend.config import Settings
from backend.main import create_app

POSTGRES = "postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/10"
WARM_UP = 50
REQUESTS = {"create": 300}
PASSWORD = "correct horse battery"  # noqa: S105 - a scratch account's
BODY = {
    "content": "Books",
    "weight_kg": 1.5,
    "destination": {"zip_code": "10001"},
    "recipient": {"name": "R", "email": "r@example.com"},
    "tags": ["bench", "books"],
}


async def token(client: httpx.AsyncClient, kind: str, fields: dict[str, Any]) -> dict[str, str]:
    email = f"{kind}@example.com"
    signup = {"name": kind, "email": email, "password": PASSWORD, **fields}
    assert (await client.post(f"/{kind}/signup", json=signup)).status_code == 201
    form = {"username": email, "password": PASSWORD}
    issued = (await client.post(f"/{kind}/token", data=form)).json()
    return {"Authorization": f"Bearer {issued['access_token']}"}


async def measure(name: str, send: Callable[[], Awaitable[httpx.Response]]) -> None:
    for _ in range(WARM_UP):
        assert (await send()).status_code < 300
    count = REQUESTS.get(name, 1000)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(count):
        response = await send()
        assert response.status_code < 300, response.text
    after = resource.getrusage(resource.RUSAGE_SELF)
    user = (after.ru_utime - before.ru_utime) / count * 1000
    system = (after.ru_stime - before.ru_stime) / count * 1000
    sys.stdout.write(f"{name}: user {user:.3f} ms, system {system:.3f} ms per request\n")


async def run(database_url: str, workloads: list[str]) -> None:
    settings = Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        partner_approval="auto",
        bcrypt_rounds=4,
        log_level="WARNING",
        unverified_seller_shipment_limit=10**9,
        api_key_requests_per_second=10**9,
        shipments_per_seller_per_minute=10**9,
        recipient_emails_per_seller_per_hour=10**9,
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
    ):
        seller = await token(client, "seller", {"zip_code": "10001"})
        partner_fields = {"serviceable_zip_codes": ["10001"], "max_handling_capacity": 1000}
        partner = await token(client, "partner", partner_fields)
        ids = []
        for _ in range(3):
            shipment = (await client.post("/shipments", json=BODY, headers=seller)).json()
            ids.append(shipment["id"])
            for scan in range(9):
                step = {"status": "in_transit", "location_zip": f"1{scan:04d}"}
                patched = await client.patch(
                    f"/shipments/{shipment['id']}", json=step, headers=partner
                )
                assert patched.status_code == 200, patched.text
        key_body = {"name": "bench", "scopes": ["shipments:read"], "mode": "live"}
        created = await client.post("/seller/api-keys", json=key_body, headers=seller)
        api_key = {"Authorization": f"Bearer {created.json()['secret']}"}
        sends = {
            "read": lambda: client.get(f"/shipments/{ids[0]}", headers=seller),
            "read_key": lambda: client.get(f"/shipments/{ids[0]}", headers=api_key),
            "list": lambda: client.get("/shipments?limit=20", headers=seller),
            "track": lambda: client.get(f"/track/{shipment['tracking_number']}"),
            "create": lambda: client.post("/shipments", json=BODY, headers=seller),
        }
        for name in workloads or list(sends):
            await measure(name, sends[name])


async def main(workloads: list[str]) -> None:
    database = f"bench_cpu_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"postgresql://{POSTGRES}/postgres")
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = f"postgresql+asyncpg://{POSTGRES}/{database}"
    try:
        migrate = [sys.executable, "-m", "backend.cli", "migrate"]
        environment = {**os.environ, "DATABASE_URL": url, "REDIS_URL": REDIS_URL}
        # Blocking, before anything else runs on the loop.
        subprocess.run(migrate, check=True, env=environment)  # noqa: S603, ASYNC221
        await run(url, workloads)
    finally:
        await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
