"""Fixed-window counters in Redis, shared by every replica."""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis

from backend.errors import RateLimited

_DECREMENT_IF_PRESENT = """
if redis.call('exists', KEYS[1]) == 1 then return redis.call('decr', KEYS[1]) end
return 0
"""


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

    async def give_back(self, subject: str) -> None:
        """Return one counted attempt, e.g. a login that turned out to be right."""
        # Only while the window exists: a bare DECR would recreate the key without a TTL.
        await self._redis.eval(_DECREMENT_IF_PRESENT, 1, self._key(subject))
