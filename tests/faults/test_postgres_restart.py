"""PostgreSQL stopped (fast: sessions ended; immediate: a crash) and started again, under load.

The outbox worker runs in the app's process, as in embedded mode: it must survive the outage and
go on delivering afterwards.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import account_with_token
from tests.faults.conftest import (
    PHASE_SECONDS,
    Outage,
    assert_outage_contract,
    assert_stream_contract,
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


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restart_under_load(
    mode: str,
    postgres: OwnedPostgres,
    durable_redis: DurableRedis,
    inspector: AsyncEngine,
    tmp_path: Path,
) -> None:
    ledger = Ledger()
    settings = fault_settings(
        postgres.url(), durable_redis.url, data_dir=tmp_path, worker_poll_seconds=0.2
    )
    async with served_client(settings, run_worker=True) as http:
        cast = await populate(http, ledger, sellers=4, partners=3, capacity=6)
        load = Load(http, cast, ledger, inspector)
        load.start()
        try:
            start = time.monotonic()
            await load.wait_for(lambda: load.warmed_up(start), PHASE_SECONDS, "warm-up")

            injected = time.monotonic()
            await asyncio.to_thread(postgres.stop, mode)
            down = time.monotonic()
            await wait_for_outage_seen(load, down)

            up = time.monotonic()
            await asyncio.to_thread(postgres.start)
            recovered = await wait_for_recovery(load, up)
            sent_before = await sent_emails(inspector)
            await load.wait_for(
                lambda: load.successes(recovered) >= 30, PHASE_SECONDS, "load after recovery"
            )
        finally:
            await load.stop()

        assert_outage_contract(load, Outage(injected, down, up, recovered))
        await assert_stream_contract(load, inspector, injected)
        await wait_for_more_sent_emails(inspector, sent_before)
        await check_invariants(inspector, ledger, http)


async def sent_emails(inspector: AsyncEngine) -> int:
    query = text("SELECT count(*) FROM outbox_messages WHERE kind = 'email' AND status = 'sent'")
    async with inspector.connect() as connection:
        return int((await connection.execute(query)).scalar_one())


async def wait_for_more_sent_emails(inspector: AsyncEngine, than: int) -> None:
    """The in-process worker delivers again after the outage (it was not killed by it)."""
    deadline = time.monotonic() + PHASE_SECONDS
    while await sent_emails(inspector) <= than:
        assert time.monotonic() < deadline, "the outbox worker sent nothing after the restart"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_first_requests_after_an_unnoticed_restart_succeed(
    mode: str, postgres: OwnedPostgres, durable_redis: DurableRedis
) -> None:
    """Every pooled connection died while the app was idle: no client may be the one to find out."""
    async with served_client(fault_settings(postgres.url(), durable_redis.url)) as http:
        _, headers = await account_with_token(http, "seller")
        # Concurrent requests leave several connections in the pool.
        before = await asyncio.gather(*(http.get("/seller/me", headers=headers) for _ in range(8)))
        assert [r.status_code for r in before] == [200] * 8

        await asyncio.to_thread(postgres.stop, mode)
        await asyncio.to_thread(postgres.start)

        after = await asyncio.gather(*(http.get("/seller/me", headers=headers) for _ in range(8)))
        assert [r.status_code for r in after] == [200] * 8, [r.text for r in after]
        assert (await http.get("/health/ready")).status_code == 200
