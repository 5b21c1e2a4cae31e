"""bcrypt through passlib (libpass), always on threads of its own, never on the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from passlib.context import CryptContext

from backend.accounts.errors import PasswordHashingBusy

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The `nice` value of the hashing threads; request handling keeps the default 0. Under
# contention the scheduler then gives a hashing thread about a tenth of what the event loop gets.
HASHING_NICENESS = 10


def _yield_cpu_to_requests() -> None:
    """Lower this thread's CPU priority (Linux keeps `nice` per thread; elsewhere it would
    apply to the whole process, so there it is left alone)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)
    except OSError:
        logger.warning("could not lower the priority of a password-hashing thread")


class PasswordHasher:
    def __init__(self, rounds: int, concurrency: int, queue_limit: int) -> None:
        self._context = CryptContext(
            schemes=["bcrypt"], bcrypt__rounds=rounds, bcrypt__truncate_error=True
        )
        # Each hash keeps a core busy for ~0.25 s at cost 12. At most `concurrency` run at once,
        # so a burst of logins queues up instead of taking every core, and at a lower priority
        # than request handling, so reads stay fast while logins run (bench/README.md).
        self._threads = ThreadPoolExecutor(
            max_workers=concurrency,
            thread_name_prefix="password-hashing",
            initializer=_yield_cpu_to_requests,
        )
        # Hashes running or waiting for a thread. Beyond `queue_limit` waiting, a new one is
        # refused at once (503) rather than queued: a flood must not make every login wait.
        self._capacity = concurrency + queue_limit
        self._admitted = 0
        self._admitted_lock = threading.Lock()  # decremented on the hashing threads
        self._decoy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await self._on_hashing_thread(self._context.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Check a password; with no hash (unknown account) spend the same time and fail."""
        if password_hash is None:
            await self.verify(password, await self._decoy())
            return False
        return await self._on_hashing_thread(self._context.verify, password, password_hash)

    async def _on_hashing_thread(self, work: Callable[..., T], *args: str) -> T:
        with self._admitted_lock:
            if self._admitted >= self._capacity:
                raise PasswordHashingBusy()
            self._admitted += 1
        try:
            job = self._threads.submit(work, *args)
        except RuntimeError:  # shut down
            self._job_done(None)
            raise
        # Counted out when the hash itself ends, not when its request gives up waiting: a
        # cancelled request leaves a started hash running on its thread.
        job.add_done_callback(self._job_done)
        return await asyncio.wrap_future(job)

    def _job_done(self, _job: Future[Any] | None) -> None:
        with self._admitted_lock:
            self._admitted -= 1

    async def _decoy(self) -> str:
        if self._decoy_hash is None:
            self._decoy_hash = await self.hash("decoy password for unknown accounts")
        return self._decoy_hash

    async def warm_up(self) -> None:
        """Compute the decoy hash at start-up, so the first unknown email is not slower."""
        await self._decoy()

    def close(self) -> None:
        """Stop the hashing threads: the hash running finishes, those still queued (for requests
        that shutdown has already ended) are dropped, so they cannot hold up the exit."""
        self._threads.shutdown(wait=False, cancel_futures=True)
