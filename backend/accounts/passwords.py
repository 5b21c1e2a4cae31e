"""bcrypt through passlib (libpass), always on threads of its own, never on the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from passlib.context import CryptContext

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
    def __init__(self, rounds: int, concurrency: int) -> None:
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
        return await asyncio.get_running_loop().run_in_executor(self._threads, work, *args)

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
