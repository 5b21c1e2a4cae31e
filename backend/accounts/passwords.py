"""bcrypt through passlib (libpass), always on worker threads, never on the event loop."""

from __future__ import annotations

import asyncio

from passlib.context import CryptContext


class PasswordHasher:
    def __init__(self, rounds: int, concurrency: int) -> None:
        self._context = CryptContext(
            schemes=["bcrypt"], bcrypt__rounds=rounds, bcrypt__truncate_error=True
        )
        # Each hash keeps a core busy for ~0.25 s at cost 12; bound how many run at once so
        # a burst of logins queues up instead of starving every other request of CPU.
        self._slots = asyncio.Semaphore(concurrency)
        self._decoy_hash: str | None = None

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._context.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Check a password; with no hash (unknown account) spend the same time and fail."""
        if password_hash is None:
            await self.verify(password, await self._decoy())
            return False
        async with self._slots:
            return await asyncio.to_thread(self._context.verify, password, password_hash)

    async def _decoy(self) -> str:
        if self._decoy_hash is None:
            self._decoy_hash = await self.hash("decoy password for unknown accounts")
        return self._decoy_hash

    async def warm_up(self) -> None:
        """Compute the decoy hash at start-up, so the first unknown email is not slower."""
        await self._decoy()
