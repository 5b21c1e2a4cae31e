"""The shared Redis client. Every command is bounded by a short timeout and retried once on a
fresh connection, so a Redis restart costs no request and an unreachable Redis turns into a fast
503 rather than a slow request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis import exceptions
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from backend.config import Settings
from backend.context import context_of

# A pooled connection that Redis closed (a restart, an idle timeout) fails its next command with
# one of these. The asyncio client retries a command on the same connection object after
# disconnecting it, so the second attempt reconnects; a Redis that is really down fails that one
# too, within its own timeout. It must be redis.asyncio's Retry: the synchronous one does not
# await the command, so its retry never runs.
RETRIED_ERRORS: tuple[type[exceptions.RedisError], ...] = (
    exceptions.ConnectionError,
    exceptions.TimeoutError,
)


def create_redis(
    settings: Settings, redis_url: str, *, max_connections: int | None = None
) -> Redis:
    """A client with its own pool of at most `max_connections` (default `REDIS_MAX_CONNECTIONS`).

    When every connection is in use, a command waits up to `REDIS_TIMEOUT_SECONDS` for one to
    come back (then ConnectionError, a 503) instead of failing at once, so a burst queues briefly.
    """
    pool = BlockingConnectionPool.from_url(
        redis_url,
        max_connections=max_connections or settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), retries=1, supported_errors=RETRIED_ERRORS),
        retry_on_error=list(RETRIED_ERRORS),
        health_check_interval=30,
        decode_responses=True,
        # Maintenance notifications are a Redis Enterprise/Cloud feature. Left at "auto" on a TCP
        # connection, redis-py 8 skips its check that a pooled connection is still open when
        # handing it out, so every connection a restart closed would fail its next command.
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    return Redis.from_pool(pool)


def pool_is_full(redis: Redis) -> bool:
    """Whether every connection of the client's pool is in use (a command would wait)."""
    pool = redis.connection_pool
    return isinstance(pool, BlockingConnectionPool) and not pool.can_get_connection()


async def get_redis(request: Request) -> Redis:
    return context_of(request).redis


RedisDep = Annotated[Redis, Depends(get_redis)]
