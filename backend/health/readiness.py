"""The readiness checks: each dependency on a connection of their own, within one deadline.

The checks never borrow from the request pools. A full pool is the app being busy, not a
dependency being down: taking a busy replica out of rotation would push its load onto the
others. So each check opens a fresh connection (PostgreSQL through a pool-less engine, Redis
through a one-off client), which also answers the question the request pools ask after an
outage: can a new connection be made? If it can, and the request pool has no connection to
spare, the dependency is "saturated" (ready, 200); if it cannot, "down" (503).

The answer comes within `HEALTH_CHECK_TIMEOUT_SECONDS` whatever the checks do: they run as tasks
the response does not wait for beyond the deadline (cancelling a connection attempt may take
its own time to clean up). A check still running when the next probe arrives is joined, not
repeated, so a hanging dependency never piles up checks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.maint_notifications import MaintNotificationsConfig
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from backend.config import Settings
from backend.redis_client import pool_is_full

CheckResult = Literal["ok", "saturated", "down"]

# PostgreSQL's "too_many_connections": the server answered, it has no connection to spare.
TOO_MANY_CONNECTIONS = "53300"
# Redis's answer to a connection beyond `maxclients`.
REDIS_MAX_CLIENTS = "max number of clients reached"


class ReadinessProbe:
    def __init__(self, settings: Settings) -> None:
        assert settings.database_url is not None
        assert settings.redis_url is not None
        self.timeout = settings.health_check_timeout_seconds
        self._redis_url = settings.redis_url
        self._request_pool_capacity = settings.db_pool_size + settings.db_max_overflow
        # NullPool: each check connects and disconnects; nothing is held between probes.
        self._engine = create_async_engine(
            settings.database_url,
            poolclass=NullPool,
            connect_args={
                "timeout": self.timeout,
                "command_timeout": self.timeout,
                "server_settings": {"application_name": "shiptrack-readiness"},
            },
        )
        self._running: dict[str, asyncio.Task[CheckResult]] = {}

    async def check(
        self, request_engine: AsyncEngine, request_redis: Redis
    ) -> dict[str, CheckResult]:
        """{"postgres": ..., "redis": ...}, within `timeout` seconds."""
        tasks = {
            "postgres": self._join_or_start("postgres", self._check_postgres),
            "redis": self._join_or_start("redis", self._check_redis),
        }
        await asyncio.wait(tasks.values(), timeout=self.timeout)
        results = {name: _result_of(task) for name, task in tasks.items()}
        # Reachable, and the requests' own pool has nothing to spare: busy, not broken.
        if results["postgres"] == "ok" and self._request_pool_full(request_engine):
            results["postgres"] = "saturated"
        if results["redis"] == "ok" and pool_is_full(request_redis):
            results["redis"] = "saturated"
        return results

    def _join_or_start(
        self, name: str, check: Callable[[], Coroutine[Any, Any, CheckResult]]
    ) -> asyncio.Task[CheckResult]:
        task = self._running.get(name)
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.create_task(check(), name=f"readiness-{name}")
            self._running[name] = task
        return task

    async def _check_postgres(self) -> CheckResult:
        try:
            async with asyncio.timeout(self.timeout), self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except DBAPIError as error:
            if getattr(error.orig, "sqlstate", None) == TOO_MANY_CONNECTIONS:
                return "saturated"
            return "down"
        except Exception:  # any other failure means "not ready"; the reason is for the logs
            return "down"
        return "ok"

    async def _check_redis(self) -> CheckResult:
        client = Redis.from_url(
            self._redis_url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), retries=0),
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        try:
            async with asyncio.timeout(self.timeout):
                return "ok" if await client.ping() else "down"
        except RedisError as error:
            return "saturated" if REDIS_MAX_CLIENTS in str(error) else "down"
        except Exception:
            return "down"
        finally:
            # The answer is known by now: a failure to close politely (a struggling server)
            # must not turn a ping that succeeded into "down", or escape the task unretrieved.
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    def _request_pool_full(self, engine: AsyncEngine) -> bool:
        checked_out: Callable[[], int] | None = getattr(engine.pool, "checkedout", None)
        return checked_out is not None and checked_out() >= self._request_pool_capacity


def _result_of(task: asyncio.Task[CheckResult]) -> CheckResult:
    if not task.done() or task.cancelled() or task.exception() is not None:
        return "down"  # no answer within the deadline
    return task.result()
