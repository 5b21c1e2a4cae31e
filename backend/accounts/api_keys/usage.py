"""`last_used_at`, recorded beside the requests that use a key rather than inside them.

A request never waits for it: the write runs in a task of its own, in its own short
transaction, at most once a minute per key (the request already read when the key was last
recorded). The work is bounded whatever the traffic: one pending write per key, a few at once,
and a cap on how many wait; a use that finds the queue full is simply recorded next time.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.accounts.api_keys.repository import mark_used
from backend.db import unit_of_work, utcnow

logger = logging.getLogger(__name__)

RECORD_EVERY_SECONDS = 60
_CONCURRENT_WRITES = 2
_MAX_PENDING = 1000


class KeyUsage:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._pending: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._writers = asyncio.Semaphore(_CONCURRENT_WRITES)

    def note(self, key_id: uuid.UUID, last_recorded: datetime | None) -> None:
        """A request used the key; record it unless that was done less than a minute ago."""
        now = utcnow()
        if last_recorded is not None and now - last_recorded < timedelta(
            seconds=RECORD_EVERY_SECONDS
        ):
            return
        if key_id in self._pending or len(self._pending) >= _MAX_PENDING:
            return
        task = asyncio.create_task(self._record(key_id, now), name="api-key-last-used")
        self._pending[key_id] = task
        task.add_done_callback(lambda _: self._pending.pop(key_id, None))

    async def _record(self, key_id: uuid.UUID, now: datetime) -> None:
        try:
            async with self._writers, unit_of_work(self._sessionmaker) as unit:
                await mark_used(unit.session, key_id, now, RECORD_EVERY_SECONDS)
        except Exception as error:
            # Best effort by design: the next use a minute on records it.
            logger.warning("could not record an API key's use (%s)", type(error).__name__)

    async def drain(self) -> None:
        """Wait for the writes already started (at shutdown, and in tests)."""
        while self._pending:
            await asyncio.gather(*self._pending.values(), return_exceptions=True)
