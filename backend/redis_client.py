"""The shared Redis client. Every command is bounded by a short timeout and retried at most once,
so an unreachable Redis turns into a fast 503 rather than a slow request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from backend.config import Settings


def create_redis(settings: Settings, redis_url: str) -> Redis:
    return Redis.from_url(
        redis_url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(ConstantBackoff(0.05), retries=1),
        health_check_interval=30,
        decode_responses=True,
    )


async def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


RedisDep = Annotated[Redis, Depends(get_redis)]
