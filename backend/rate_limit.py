"""Fixed-window counters in Redis, shared by every replica."""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis

from backend.errors import RateLimited


class FixedWindowLimiter:
    def __init__(self, redis: Redis, name: str, limit: int, window_seconds: int) -> None:
        self._redis = redis
        self._name = name
        self._limit = limit
        self._window = window_seconds

    def _key(self, subject: str) -> str:
        # Hashed: keys stay short and hold no email addresses or IPs in clear.
        digest = hashlib.sha256(subject.encode()).hexdigest()[:32]
        return f"ratelimit:{self._name}:{digest}"

    async def hit(self, subject: str) -> None:
        """Count one attempt; raise `RateLimited` once the window's budget is spent."""
        key = self._key(subject)
        async with self._redis.pipeline(transaction=True) as pipe:
            # Creates the window with its expiry on the first hit (SET NX works on Redis 6 too).
            pipe.set(key, 0, ex=self._window, nx=True)
            pipe.incr(key)
            pipe.ttl(key)
            _, count, ttl = await pipe.execute()
        if count > self._limit:
            raise RateLimited(ttl if ttl > 0 else self._window)

    async def check(self, subject: str) -> None:
        """Raise `RateLimited` if the budget is already spent, without counting an attempt."""
        key = self._key(subject)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.ttl(key)
            count, ttl = await pipe.execute()
        if count is not None and int(count) >= self._limit:
            raise RateLimited(ttl if ttl > 0 else self._window)
