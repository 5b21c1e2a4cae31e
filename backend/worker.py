"""`shiptrack worker`: delivers outbox messages, at least once, with retries and a dead letter.

Emails and webhooks travel in lanes of their own, each with its own slots. A free slot claims the
next due rows of its lane (FOR UPDATE SKIP LOCKED): there is no batch to wait for, and slow
webhook receivers never hold up an email. Within the webhook lane, one endpoint takes only a few
slots at a time.

A claimed row is leased. The lease is renewed while the row is in hand, and a send that cannot
keep its lease is stopped before the lease runs out, so no row is ever being sent by two
workers. Several workers may run at once; one that dies mid-send loses nothing: when its lease
runs out another worker sends again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.outbox.email import EmailRenderer, EmailSender, email_sender
from backend.outbox.outbox import (
    EMAIL,
    REDACT,
    ClaimedMessage,
    OutboxClaims,
    retry_delay,
)
from backend.retention import run_retention_purges
from backend.shipments.expiry import run_expiry_sweeps
from backend.webhooks.events import WEBHOOK
from backend.webhooks.webhooks import (
    Resolver,
    WebhookDispatcher,
    resolver_for,
    webhook_retry_plan,
)

logger = logging.getLogger(__name__)

# After `stop()`, sends in flight get this long to finish; the rest are cancelled and their rows
# given back (each webhook attempt ends within its own deadline anyway).
SHUTDOWN_GRACE_SECONDS = 5.0
# A send stops this far into its lease unless the lease was renewed: stopping takes a moment,
# and the row must not be sent on after another worker may have claimed it.
LEASE_SAFETY = 0.9


class UnknownMessageKind(Exception):
    pass


class LeaseLost(Exception):
    """The row could not be kept for this worker; whoever holds it next sends it."""


class Lane:
    """The slots of one kind of message: its sends in flight, at most `size` at once."""

    def __init__(
        self, name: str, size: int, *, kind: str | None = None, exclude_kind: str | None = None
    ) -> None:
        self.name = name
        self.size = size
        # The rows this lane claims: of `kind`, or of every kind but `exclude_kind`.
        self.kind = kind
        self.exclude_kind = exclude_kind
        self.sends: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()

    @property
    def free(self) -> int:
        return self.size - len(self.sends)

    def start(self, send: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(send)
        self.sends.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.sends.discard(task)
        self._slot_freed.set()

    async def wait_for_slot(self, stopping: asyncio.Event) -> None:
        while self.free <= 0 and not stopping.is_set():
            self._slot_freed.clear()
            await self._slot_freed.wait()

    def wake(self) -> None:
        self._slot_freed.set()


class OutboxWorker:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        sender: EmailSender | None = None,
        http: httpx.AsyncClient | None = None,
        worker_id: str | None = None,
        resolve: Resolver | None = None,
        shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._sender = sender or email_sender(settings)
        self._renderer = EmailRenderer(settings.public_base_url)
        self._owns_http = http is None
        # Redirects are not followed: a receiver could bounce us into our own network. No
        # keep-alive: connections go to checked addresses, and one made for a host name must
        # not carry another name's request.
        self._http = http or httpx.AsyncClient(
            follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0)
        )
        self._webhooks = WebhookDispatcher(
            settings, sessionmaker, self._http, resolve or resolver_for(settings)
        )
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stopping = asyncio.Event()
        self._shutdown_grace = shutdown_grace_seconds
        # Unknown kinds go with the emails, to be dead-lettered there.
        self._lanes = (
            Lane("emails", settings.outbox_email_concurrency, exclude_kind=WEBHOOK),
            Lane("webhooks", settings.outbox_webhook_concurrency, kind=WEBHOOK),
        )
        # Webhook attempts in flight per endpoint id.
        self._endpoint_sends: Counter[str] = Counter()

    def stop(self) -> None:
        """Stop claiming; sends in flight get a short grace, then are cancelled and given back."""
        self._stopping.set()
        for lane in self._lanes:
            lane.wake()

    async def run(self) -> None:
        logger.info("outbox worker %s started", self.worker_id)
        try:
            await asyncio.gather(
                *(self._keep_busy(lane) for lane in self._lanes),
                # Periodic work of the worker process that is not a message to send.
                run_expiry_sweeps(self._settings, self._sessionmaker, self._stopping),
                run_retention_purges(self._settings, self._sessionmaker, self._stopping),
            )
        finally:
            await self._finish_sends()
            await self._give_back_rows()
            await self.aclose()
        logger.info("outbox worker %s stopped", self.worker_id)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def run_once(self) -> int:
        """Claim what each lane has room for (a batch at most) and settle all of it; returns
        how many rows were taken. For tests and one-off runs: `run` claims as slots free up."""
        taken = 0
        for lane in self._lanes:
            count, _ = await self._fill(lane)
            taken += count
        await asyncio.gather(*(send for lane in self._lanes for send in list(lane.sends)))
        return taken

    # --- claiming ---------------------------------------------------------------------------

    async def _keep_busy(self, lane: Lane) -> None:
        """Whenever the lane has a free slot, claim the next due rows, until asked to stop."""
        while not self._stopping.is_set():
            await lane.wait_for_slot(self._stopping)
            if self._stopping.is_set():
                return
            try:
                _, drained = await self._fill(lane)
            except Exception:
                # The database may be restarting: keep the worker alive and try again shortly.
                logger.exception("outbox worker: claiming %s failed", lane.name)
                drained = True
            if drained:
                await self._pause()

    async def _pause(self) -> None:
        """Sleep until the next poll, waking at once if asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self._settings.worker_poll_seconds)

    async def _fill(self, lane: Lane) -> tuple[int, bool]:
        """Claim due rows for the lane's free slots and start sending them. Returns how many
        were started, and whether the lane's queue ran dry (fewer rows due than slots free)."""
        wanted = min(lane.free, self._settings.outbox_batch_size)
        if wanted <= 0:
            return 0, False
        # Taken before the claim, so this worker's idea of the lease never outlasts the database's.
        lease_from = asyncio.get_running_loop().time()
        async with self._sessionmaker() as session:
            claimed = await OutboxClaims(session, self.worker_id).claim(
                wanted,
                self._settings.outbox_lease_seconds,
                kind=lane.kind,
                exclude_kind=lane.exclude_kind,
                busy_endpoints=self._busy_endpoints(),
            )
        over_limit: list[uuid.UUID] = []
        for message in claimed:
            endpoint = self._endpoint_of(message)
            if self._reserve_endpoint(endpoint):
                lane.start(self._settle(message, lease_from, endpoint))
            else:
                over_limit.append(message.id)
        if over_limit:
            # More rows for one endpoint than it may have in flight: another worker, or this
            # one once a slot of that endpoint frees, takes them.
            async with self._sessionmaker() as session:
                await OutboxClaims(session, self.worker_id).release(over_limit)
        return len(claimed) - len(over_limit), len(claimed) < wanted

    def _reserve_endpoint(self, endpoint: str | None) -> bool:
        """Count one more send to `endpoint`, unless it has as many in flight as it may."""
        if endpoint is None:
            return True
        if self._endpoint_sends[endpoint] >= self._settings.webhook_endpoint_concurrency:
            return False
        self._endpoint_sends[endpoint] += 1
        return True

    def _busy_endpoints(self) -> list[str]:
        limit = self._settings.webhook_endpoint_concurrency
        return [endpoint for endpoint, sends in self._endpoint_sends.items() if sends >= limit]

    @staticmethod
    def _endpoint_of(message: ClaimedMessage) -> str | None:
        endpoint = message.payload.get("endpoint_id") if message.kind == WEBHOOK else None
        # A webhook row without one fails its delivery, where the failure is recorded.
        return None if endpoint is None else str(endpoint)

    # --- stopping ---------------------------------------------------------------------------

    async def _finish_sends(self) -> None:
        sends = [send for lane in self._lanes for send in lane.sends]
        if not sends:
            return
        _, unfinished = await asyncio.wait(sends, timeout=self._shutdown_grace)
        for send in unfinished:
            send.cancel()
        if unfinished:
            logger.warning("outbox worker: %d sends cut short by shutdown", len(unfinished))
            await asyncio.wait(unfinished)

    async def _give_back_rows(self) -> None:
        """Rows still held (sends cut short, claims not yet started) become due again now,
        rather than when their lease runs out."""
        try:
            async with self._sessionmaker() as session:
                await OutboxClaims(session, self.worker_id).release()
        except Exception:
            logger.warning("outbox worker: giving rows back failed; their leases will run out")

    # --- one message ------------------------------------------------------------------------

    async def _settle(
        self, message: ClaimedMessage, lease_from: float, endpoint: str | None
    ) -> None:
        """Send the message while keeping its lease, then record the outcome."""
        try:
            async with self._lease_kept(message.id, lease_from):
                failure = await self._attempt(message)
            if failure is None:
                await self._mark_sent(message)
            else:
                await self._record_failure(message, failure)
        except LeaseLost:
            logger.warning(
                "outbox message %s: its lease could not be kept; its next holder sends it",
                message.id,
            )
        except Exception:
            # Not recorded: the row stays claimed until its lease runs out, then is sent again.
            logger.exception("outbox message %s: recording the outcome failed", message.id)
        finally:
            if endpoint is not None:
                self._endpoint_sends[endpoint] -= 1
                if self._endpoint_sends[endpoint] <= 0:
                    del self._endpoint_sends[endpoint]

    @contextlib.asynccontextmanager
    async def _lease_kept(self, message_id: uuid.UUID, lease_from: float) -> AsyncIterator[None]:
        """Renew the row's lease while the block runs; stop the block (LeaseLost) before the
        lease runs out if it cannot be renewed, or at once if the row is no longer ours."""
        lease = self._settings.outbox_lease_seconds
        done = asyncio.Event()
        try:
            async with asyncio.timeout_at(lease_from + lease * LEASE_SAFETY) as deadline:
                keeper = asyncio.create_task(self._renew(message_id, deadline, done))
                try:
                    yield
                finally:
                    # The send is over; settling afterwards only lands if the row is still ours.
                    if not deadline.expired():
                        deadline.reschedule(None)
                    done.set()
                    await keeper
        except TimeoutError:
            raise LeaseLost from None

    async def _renew(
        self, message_id: uuid.UUID, deadline: asyncio.Timeout, done: asyncio.Event
    ) -> None:
        lease = self._settings.outbox_lease_seconds
        loop = asyncio.get_running_loop()
        while not await _set_within(done, lease / 3):
            asked_at = loop.time()
            try:
                async with self._sessionmaker() as session:
                    held = await OutboxClaims(session, self.worker_id).renew(message_id, lease)
            except Exception:
                # The deadline stands: the send stops before the old lease runs out.
                logger.warning("outbox message %s: renewing its lease failed", message_id)
                continue
            if done.is_set() or deadline.expired():
                return
            if not held:
                deadline.reschedule(loop.time())  # taken over after a stall: stop sending now
                return
            deadline.reschedule(asked_at + lease * LEASE_SAFETY)

    async def _attempt(self, message: ClaimedMessage) -> Exception | None:
        """Deliver the message; returns the failure, whatever it is, to be recorded."""
        try:
            await self._deliver(message)
        except Exception as error:
            return error
        return None

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

    async def _mark_sent(self, message: ClaimedMessage) -> None:
        async with self._sessionmaker() as session:
            await OutboxClaims(session, self.worker_id).mark_sent(message.id)

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


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for the event; True if it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
