"""Redis killed (SIGKILL, a crash) and started again from its append-only file, under load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from backend.embedded import start_redis
from tests.factories import PASSWORD, account_with_token, bearer
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
from tests.faults.servers import (
    DurableRedis,
    OwnedPostgres,
    RedisProcess,
    free_tcp_port,
    scratch_folder,
)

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
            await load.wait_for(lambda: load.warmed_up(start), PHASE_SECONDS, "warm-up")

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
        await assert_stream_contract(load, inspector, injected)
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


class TcpRedis(RedisProcess):
    """redis-server on a loopback TCP port (as in production) with an append-only file.

    Over TCP, redis-py hands out pooled connections without first noticing that the server
    closed them, which a Unix socket does not show.
    """

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.url = f"redis://127.0.0.1:{port}/0"
        self._port = port

    def start(self) -> None:
        self._process = start_redis(self.folder, port=self._port, persistent=True)


@pytest.fixture
def tcp_redis() -> Iterator[TcpRedis]:
    with scratch_folder("shiptrack-redis-") as root:
        server = TcpRedis(root, free_tcp_port())
        server.start()
        try:
            yield server
        finally:
            server.stop()


BURST = 60
DEFAULT_REDIS_TIMEOUT_SECONDS = Settings.model_fields["redis_timeout_seconds"].default


async def burst(http: httpx.AsyncClient, headers: dict[str, str]) -> list[httpx.Response]:
    """BURST authenticated requests at once; each checks its token against Redis."""
    return await asyncio.gather(*(http.get("/seller/me", headers=headers) for _ in range(BURST)))


def failures(responses: list[httpx.Response]) -> list[str]:
    return [f"{r.status_code} {r.text[:200]}" for r in responses if not r.is_success]


async def test_bursts_after_a_redis_restart_all_succeed(
    postgres: OwnedPostgres, tcp_redis: TcpRedis
) -> None:
    """Redis crashed and came back while every pooled connection was idle: the first request on
    each dead connection retries on a fresh one, so no request fails once Redis answers."""
    # Redis's production-default timeout: sixty reconnects at once on a two-core machine that
    # also runs the load can take longer than the suite's short 0.5 s, which is not the point.
    settings = fault_settings(
        postgres.url(), tcp_redis.url, redis_timeout_seconds=DEFAULT_REDIS_TIMEOUT_SECONDS
    )
    async with served_client(settings) as http:
        _, headers = await account_with_token(http, "seller")
        warm = await burst(http, headers)  # fills the pool with connections a crash will kill
        assert not failures(warm), failures(warm)

        tcp_redis.kill()
        await asyncio.to_thread(tcp_redis.start)
        up = time.monotonic()
        # Redis answers again: readiness, on connections of its own, says so at once.
        ready = await http.get("/health/ready")

        await asyncio.sleep(max(0.0, up + 2 - time.monotonic()))
        soon = await burst(http, headers)
        await asyncio.sleep(max(0.0, up + 12 - time.monotonic()))
        later = await burst(http, headers)
        ready_later = await http.get("/health/ready")

    assert ready.status_code == 200, ready.text
    assert not failures(soon), f"{len(failures(soon))} of {BURST} failed: {failures(soon)[:5]}"
    assert not failures(later), f"{len(failures(later))} of {BURST} failed: {failures(later)[:5]}"
    assert ready_later.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}
