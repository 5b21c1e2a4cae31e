"""PostgreSQL frozen (SIGSTOP, sockets left open) for longer than the statement timeout."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults.conftest import (
    PHASE_SECONDS,
    REQUEST_DEADLINE_SECONDS,
    STATEMENT_TIMEOUT_SECONDS,
    Outage,
    assert_outage_contract,
    fault_settings,
    served_client,
    wait_for_outage_seen,
    wait_for_recovery,
)
from tests.faults.invariants import check_invariants
from tests.faults.load import Load, populate
from tests.faults.records import Ledger
from tests.faults.servers import DurableRedis, OwnedPostgres

pytestmark = pytest.mark.faults

# Longer than the statement timeout, and longer than a request may take: a request that simply
# waited for the server to come back would overrun its deadline.
PAUSE_SECONDS = max(REQUEST_DEADLINE_SECONDS + 1.0, 2 * STATEMENT_TIMEOUT_SECONDS)


async def test_postgres_paused_longer_than_the_statement_timeout(
    postgres: OwnedPostgres, durable_redis: DurableRedis, inspector: AsyncEngine
) -> None:
    ledger = Ledger()
    async with served_client(fault_settings(postgres.url(), durable_redis.url)) as http:
        cast = await populate(http, ledger, sellers=4, partners=3, capacity=6)
        load = Load(http, cast, ledger, inspector)
        load.start()
        try:
            start = time.monotonic()
            await load.wait_for(lambda: load.successes(start) >= 30, PHASE_SECONDS, "warm-up")

            injected = time.monotonic()
            postgres.pause()
            try:
                down = time.monotonic()
                await wait_for_outage_seen(load, down)
                # The length of the fault itself, not a wait for something to happen.
                await asyncio.sleep(max(0.0, down + PAUSE_SECONDS - time.monotonic()))
            finally:
                up = time.monotonic()
                postgres.resume()
            recovered = await wait_for_recovery(load, up)
            await load.wait_for(
                lambda: load.successes(recovered) >= 30, PHASE_SECONDS, "load after recovery"
            )
        finally:
            await load.stop()

        assert_outage_contract(load, Outage(injected, down, up, recovered))
        await check_invariants(inspector, ledger, http)
