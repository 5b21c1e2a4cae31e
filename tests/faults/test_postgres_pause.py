"""PostgreSQL frozen (SIGSTOP, sockets left open) under a mixed load: for longer than a request
may take, and for stalls around the client's command timeout, where a timed-out BEGIN once cost
writes that had been answered 201 (tests/faults/test_stalled_begin.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from tests.faults.conftest import (
    COMMAND_TIMEOUT_SECONDS,
    PHASE_SECONDS,
    REQUEST_DEADLINE_SECONDS,
    STATEMENT_TIMEOUT_SECONDS,
    Outage,
    assert_outage_contract,
    assert_stream_contract,
    fault_settings,
    request_deadline_seconds,
    served_client,
    wait_for_outage_seen,
    wait_for_recovery,
)
from tests.faults.invariants import check_invariants
from tests.faults.load import Load, populate
from tests.faults.records import Ledger, unexpected_exchanges
from tests.faults.report import report_fault
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
            await load.wait_for(lambda: load.warmed_up(start), PHASE_SECONDS, "warm-up")

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
        await assert_stream_contract(load, inspector, injected)
        await check_invariants(inspector, ledger, http)


# Stalls as multiples of the command timeout: the drill lost acknowledged writes between 1x and 2x.
STALL_MULTIPLES = (1.1, 1.5, 1.9, 3.0)


async def stall_under_load(
    postgres: OwnedPostgres,
    redis: DurableRedis,
    inspector: AsyncEngine,
    settings: Settings,
    stall_seconds: float,
) -> None:
    """Freeze PostgreSQL for exactly `stall_seconds` under the mixed load, then check that no
    request failed other than with a 503 within the deadline, that service came back, and
    that every write answered 2xx is stored."""
    deadline = request_deadline_seconds(settings)
    ledger = Ledger()
    async with served_client(settings, deadline_seconds=deadline) as http:
        cast = await populate(http, ledger, sellers=4, partners=3, capacity=6)
        load = Load(http, cast, ledger, inspector)
        load.start()
        try:
            start = time.monotonic()
            await load.wait_for(lambda: load.warmed_up(start), PHASE_SECONDS, "warm-up")
            injected = time.monotonic()
            postgres.pause()
            try:
                await asyncio.sleep(stall_seconds)
            finally:
                up = time.monotonic()
                postgres.resume()
            recovered = await wait_for_recovery(load, up)
            await load.wait_for(
                lambda: load.successes(recovered) >= 30, PHASE_SECONDS, "load after recovery"
            )
        finally:
            await load.stop()

        report_fault(load.exchanges, injected, up, recovered)
        problems = unexpected_exchanges(load.exchanges, deadline)
        assert not problems, f"{len(problems)} bad exchanges:\n" + "\n".join(problems[:40])
        late = [str(e) for e in load.since(recovered) if e.unavailable]
        assert not late, "503s after recovery:\n" + "\n".join(late[:20])
        await assert_stream_contract(load, inspector, injected, deadline)
        await check_invariants(inspector, ledger, http)
        # Partners sent some of their steps as scan batches, which the stalls hit too.
        assert ledger.scans, "no scan was acknowledged"


@pytest.mark.parametrize("multiple", STALL_MULTIPLES)
async def test_acknowledged_writes_survive_stalls_around_the_command_timeout(
    multiple: float, postgres: OwnedPostgres, durable_redis: DurableRedis, inspector: AsyncEngine
) -> None:
    settings = fault_settings(postgres.url(), durable_redis.url)
    await stall_under_load(
        postgres, durable_redis, inspector, settings, multiple * COMMAND_TIMEOUT_SECONDS
    )


async def test_acknowledged_writes_survive_a_stall_with_the_production_default_timeouts(
    postgres: OwnedPostgres, durable_redis: DurableRedis, inspector: AsyncEngine
) -> None:
    """The pool, connect, command, statement and Redis deadlines as shipped."""
    defaults = {
        name: Settings.model_fields[name].default
        for name in (
            "db_pool_size",
            "db_max_overflow",
            "db_pool_timeout_seconds",
            "db_connect_timeout_seconds",
            "db_command_timeout_seconds",
            "db_statement_timeout_ms",
            "redis_timeout_seconds",
            "health_check_timeout_seconds",
        )
    }
    settings = fault_settings(postgres.url(), durable_redis.url, **defaults)
    await stall_under_load(
        postgres, durable_redis, inspector, settings, 1.5 * settings.db_command_timeout_seconds
    )
