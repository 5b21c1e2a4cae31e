"""The Redis connection pool exhausted by a stampede of authenticated requests and logins.

Every authenticated request checks its token's revocation on Redis, and every login counts its
attempts there, through the app's one bounded pool (`REDIS_MAX_CONNECTIONS`). With a pool of 4
and ten times as many clients hammering at once, a request waits up to `REDIS_TIMEOUT_SECONDS`
for a connection and then gets a 503: it must never get a 500 or take longer than the deadline.
Redis itself answers all along, so readiness says "saturated" (200), never "down". The live
streams hang off the process's own subscription, not the pool: they go on as if nothing
happened. Once the stampede ends, nothing fails any more.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults.conftest import (
    PHASE_SECONDS,
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
from tests.faults.streams import FollowedShipment

pytestmark = pytest.mark.faults

REDIS_POOL = 4
STAMPEDE_CLIENTS = 24
STAMPEDE_SECONDS = 4.0


def redis_saturated(load: Load, since: float) -> bool:
    checks = [checks for answered, checks in load.readiness_checks if answered >= since]
    return any(check.get("redis") == "saturated" for check in checks)


def streams_ended_by(followed: list[FollowedShipment], start: float, end: float) -> list[str]:
    """Streams open when the stampede began that ended during it other than by their
    shipment's terminal event."""
    return [
        f"{shipment}: {connection}"
        for shipment in followed
        for connection in shipment.connections
        if connection.status == 200
        and connection.answered is not None
        and connection.answered < start
        and connection.ended is not None
        and start <= connection.ended <= end
        and connection.ending != "terminal"
    ]


async def test_redis_pool_exhausted_by_authenticated_requests_and_logins(
    postgres: OwnedPostgres, durable_redis: DurableRedis, inspector: AsyncEngine
) -> None:
    ledger = Ledger()
    settings = fault_settings(postgres.url(), durable_redis.url, redis_max_connections=REDIS_POOL)
    async with served_client(settings) as http:
        cast = await populate(http, ledger, sellers=4, partners=3, capacity=6)
        load = Load(http, cast, ledger, inspector)
        load.start()
        try:
            start = time.monotonic()
            await load.wait_for(lambda: load.warmed_up(start), PHASE_SECONDS, "warm-up")

            injected = down = time.monotonic()
            load.auth_stampede(STAMPEDE_CLIENTS)
            await load.wait_for(
                lambda: redis_saturated(load, down),
                PHASE_SECONDS,
                "readiness to find the Redis pool saturated",
            )
            # The length of the fault itself, not a wait for something to happen.
            await asyncio.sleep(max(0.0, down + STAMPEDE_SECONDS - time.monotonic()))
            await load.end_stampede()
            up = time.monotonic()
            recovered = await wait_for_recovery(load, up)
            await load.wait_for(
                lambda: load.successes(recovered) >= 30, PHASE_SECONDS, "load after recovery"
            )
        finally:
            await load.stop()

        # Redis answered all along: readiness says "saturated" (200), not down.
        assert_outage_contract(load, Outage(injected, down, up, recovered), dependency_down=False)
        stampede = [e for e in load.since(down) if e.actor.startswith("auth-stampede")]
        assert {e.operation for e in stampede} == {"me", "login"}
        assert len(stampede) >= 2 * STAMPEDE_CLIENTS, f"only {len(stampede)} stampede requests"
        untold = [str(e) for e in load.exchanges if e.unavailable and e.code is None]
        assert not untold, "503s without a problem+json code:\n" + "\n".join(untold[:20])
        ended = streams_ended_by(load.streams.followed, down, up)
        assert not ended, "streams ended by the stampede:\n" + "\n".join(ended)
        await assert_stream_contract(load, inspector, injected)
        await check_invariants(inspector, ledger, http)
