"""The connection pool exhausted by requests stuck on a lock for longer than the statement timeout.

Another client holds every partner row locked, so each create (which claims a partner's capacity)
and each status change that frees capacity waits on that lock until the statement timeout cancels
it, holding a pooled connection meanwhile. A stampede of creates then holds every connection, and
every other request has to wait for the pool: it must get a 503 once the pool timeout passes,
never a hang. The pool is as large as the steady load needs, so only the stampede exhausts it.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults.conftest import (
    PHASE_SECONDS,
    STATEMENT_TIMEOUT_SECONDS,
    Outage,
    assert_outage_contract,
    assert_stream_contract,
    fault_settings,
    served_client,
    wait_for_recovery,
)
from tests.faults.invariants import check_invariants
from tests.faults.load import Load, populate
from tests.faults.records import Ledger
from tests.faults.servers import DurableRedis, OwnedPostgres

pytestmark = pytest.mark.faults

# One connection per client of the steady load (sellers, partners, account clients, the probe).
SELLERS, PARTNERS, ACCOUNT_CLIENTS = 4, 3, 2
FIXED_POOL: dict[str, object] = {
    "db_pool_size": SELLERS + PARTNERS + ACCOUNT_CLIENTS + 1,
    "db_max_overflow": 0,
}
STAMPEDE_CLIENTS = 30
LOCK_SECONDS = STATEMENT_TIMEOUT_SECONDS + 1.5
# Requests that never touch the locked rows: a 503 for one of these is the pool running dry.
LOCK_FREE = {"list", "read", "me", "signup", "login"}


async def test_pool_exhausted_by_requests_stuck_on_a_lock(
    postgres: OwnedPostgres, durable_redis: DurableRedis, inspector: AsyncEngine
) -> None:
    ledger = Ledger()
    settings = fault_settings(postgres.url(), durable_redis.url, **FIXED_POOL)
    async with served_client(settings) as http:
        cast = await populate(http, ledger, sellers=SELLERS, partners=PARTNERS, capacity=6)
        load = Load(http, cast, ledger, inspector, account_clients=ACCOUNT_CLIENTS)
        load.start()
        try:
            start = time.monotonic()
            await load.wait_for(lambda: load.warmed_up(start), PHASE_SECONDS, "warm-up")

            injected = time.monotonic()
            async with inspector.connect() as blocker:
                await blocker.execute(text("SELECT id FROM partners FOR UPDATE"))
                try:
                    down = time.monotonic()
                    load.stampede(STAMPEDE_CLIENTS)
                    await load.wait_for(
                        lambda: any(
                            e.unavailable and e.operation in LOCK_FREE for e in load.since(down)
                        ),
                        PHASE_SECONDS,
                        "requests that take no lock to find the pool exhausted",
                    )
                    # The length of the fault itself, not a wait for something to happen.
                    await asyncio.sleep(max(0.0, down + LOCK_SECONDS - time.monotonic()))
                    await load.end_stampede()
                finally:
                    await blocker.rollback()
                    up = time.monotonic()
            recovered = await wait_for_recovery(load, up)
            await load.wait_for(
                lambda: load.successes(recovered) >= 30, PHASE_SECONDS, "load after recovery"
            )
        finally:
            await load.stop()

        stuck = [e for e in load.since(down) if e.operation == "create" and e.finished <= up]
        assert any(e.unavailable for e in stuck), "no create was stopped by the statement timeout"
        # PostgreSQL answered all along: readiness says "saturated" (200), not down.
        assert_outage_contract(load, Outage(injected, down, up, recovered), dependency_down=False)
        await assert_stream_contract(load, inspector, injected)
        await check_invariants(inspector, ledger, http)
