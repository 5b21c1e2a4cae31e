"""`shiptrack worker`: delivers outbox messages, at least once, with retries and a dead letter.

Several workers may run at once: each claims a disjoint batch (FOR UPDATE SKIP LOCKED) for a
lease. One killed mid-batch loses nothing: when its lease runs out another worker sends again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.notifications.email import EmailRenderer, EmailSender, email_sender
from backend.notifications.events import WEBHOOK
from backend.notifications.outbox import (
    EMAIL,
    REDACT,
    ClaimedMessage,
    OutboxClaims,
    retry_delay,
)
from backend.notifications.webhooks import WebhookDispatcher, webhook_retry_plan

logger = logging.getLogger(__name__)

# Messages of one batch sent at once; SMTP servers and receivers dislike floods.
CONCURRENT_SENDS = 10


class UnknownMessageKind(Exception):
    pass


class OutboxWorker:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        sender: EmailSender | None = None,
        http: httpx.AsyncClient | None = None,
        worker_id: str | None = None,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._sender = sender or email_sender(settings)
        self._renderer = EmailRenderer(settings.public_base_url)
        # Redirects are not followed: a receiver could bounce us into our own network.
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(follow_redirects=False)
        self._webhooks = WebhookDispatcher(settings, sessionmaker, self._http)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stopping = asyncio.Event()
        self._sends = asyncio.Semaphore(CONCURRENT_SENDS)

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run`."""
        self._stopping.set()

    async def run(self) -> None:
        logger.info("outbox worker %s started", self.worker_id)
        while not self._stopping.is_set():
            try:
                handled = await self.run_once()
            except Exception:
                # The database may be restarting: keep the worker alive and try again shortly.
                logger.exception("outbox worker: claiming failed")
                handled = 0
            if handled < self._settings.outbox_batch_size:
                await self._pause()
        await self.aclose()
        logger.info("outbox worker %s stopped", self.worker_id)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _pause(self) -> None:
        """Sleep until the next poll, waking at once if asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self._settings.worker_poll_seconds)

    async def run_once(self) -> int:
        """Claim one batch and settle every message in it; returns how many were claimed."""
        async with self._sessionmaker() as session:
            batch = await OutboxClaims(session, self.worker_id).claim(
                self._settings.outbox_batch_size, self._settings.outbox_lease_seconds
            )
        await asyncio.gather(*(self._settle(message) for message in batch))
        return len(batch)

    async def _settle(self, message: ClaimedMessage) -> None:
        async with self._sends:
            try:
                await self._deliver(message)
            except Exception as error:  # every failure is recorded and retried, whatever it is
                await self._record_failure(message, error)
                return
        async with self._sessionmaker() as session:
            await OutboxClaims(session, self.worker_id).mark_sent(message.id)

    async def _deliver(self, message: ClaimedMessage) -> None:
        if message.kind == EMAIL:
            await self._send_email(message)
        elif message.kind == WEBHOOK:
            await self._webhooks.deliver(
                uuid.UUID(message.payload["endpoint_id"]),
                uuid.UUID(message.payload["event_id"]),
                message.attempts,
            )
        else:
            raise UnknownMessageKind(message.kind)

    async def _send_email(self, message: ClaimedMessage) -> None:
        payload = dict(message.payload)
        template, to = payload.pop("template"), payload.pop("to")
        payload.pop(REDACT, None)
        email = self._renderer.render(
            template,
            to,
            payload,
            sender=self._settings.email_from,
            message_id=message.id,
            written_at=message.created_at,
        )
        await self._sender.send(email)

    def _retry_plan(self, message: ClaimedMessage) -> tuple[int, float]:
        """(the attempt cap, the delay before the next attempt) for this kind of message."""
        if message.kind == WEBHOOK:
            # Spans more than the day after which a failing endpoint is disabled.
            return webhook_retry_plan(message.attempts)
        settings = self._settings
        delay = retry_delay(
            message.attempts,
            base=settings.outbox_backoff_base_seconds,
            cap=settings.outbox_backoff_cap_seconds,
        )
        return settings.outbox_max_attempts, delay

    async def _record_failure(self, message: ClaimedMessage, error: Exception) -> None:
        max_attempts, delay = self._retry_plan(message)
        final = isinstance(error, UnknownMessageKind) or message.attempts >= max_attempts
        description = f"{type(error).__name__}: {error}"
        log = logger.error if final else logger.warning
        log(
            "outbox message %s (%s) attempt %d failed%s: %s",
            message.id,
            message.kind,
            message.attempts,
            ", dead-lettered" if final else f", retry in {delay:.0f}s",
            description,
        )
        async with self._sessionmaker() as session:
            await OutboxClaims(session, self.worker_id).mark_failed(
                message.id,
                description,
                delay_seconds=delay,
                max_attempts=message.attempts if final else max_attempts,
            )
