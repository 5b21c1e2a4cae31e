"""Redis killed (SIGKILL, a crash) and started again from its append-only file, under load."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PASSWORD, account_with_token, bearer
from tests.faults.conftest import (
    PHASE_SECONDS,
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


async def test_redis_killed_and_restarted_under_load(
    postgres: OwnedPostgres, durable_redis: DurableRedis, inspector: AsyncEngine
) -> None:
    ledger = Ledger()
    async with served_client(fault_settings(postgres.url(), durable_redis.url)) as http:
        cast = await populate(http, ledger, sellers=4, partners=3, capacity=6)
        seller = cast.sellers[0]
        load = Load(http, cast, ledger, inspector)
        load.start()
        try:
            start = time.monotonic()
            await load.wait_for(lambda: load.successes(start) >= 30, PHASE_SECONDS, "warm-up")

            # Logged out the instant before the crash: the revocation must survive it.
            login = await http.post(
                "/seller/token", data={"username": seller.email, "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            last_revoked = bearer(login.json()["access_token"])
            assert (await http.post("/seller/logout", headers=last_revoked)).status_code == 204
            ledger.revoked.append(("seller", last_revoked))

            injected = time.monotonic()
            durable_redis.kill()
            down = time.monotonic()
            await wait_for_outage_seen(load, down)
            # Revocations cannot be read: a revoked token is refused (503), never let through.
            while_down = await http.get("/seller/me", headers=last_revoked)
            assert while_down.status_code == 503, while_down.text
            still_valid = await http.get("/seller/me", headers=seller.headers)
            assert still_valid.status_code == 503, still_valid.text

            up = time.monotonic()
            await asyncio.to_thread(durable_redis.start)
            recovered = await wait_for_recovery(load, up)
            await load.wait_for(
                lambda: load.successes(recovered) >= 30, PHASE_SECONDS, "load after recovery"
            )
        finally:
            await load.stop()

        assert_outage_contract(load, Outage(injected, down, up, recovered))
        # The invariants include: every acknowledged logout, the last one too, is still a 401.
        await check_invariants(inspector, ledger, http)


async def test_first_requests_after_an_unnoticed_redis_restart_succeed(
    postgres: OwnedPostgres, durable_redis: DurableRedis
) -> None:
    """Every pooled Redis connection died while the app was idle: the next requests reconnect."""
    async with served_client(fault_settings(postgres.url(), durable_redis.url)) as http:
        _, headers = await account_with_token(http, "seller")
        before = await asyncio.gather(*(http.get("/seller/me", headers=headers) for _ in range(8)))
        assert [r.status_code for r in before] == [200] * 8

        durable_redis.kill()
        await asyncio.to_thread(durable_redis.start)

        after = await asyncio.gather(*(http.get("/seller/me", headers=headers) for _ in range(8)))
        assert [r.status_code for r in after] == [200] * 8, [r.text for r in after]
        assert (await http.get("/health/ready")).status_code == 200
