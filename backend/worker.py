"""`shiptrack worker`: delivers outbox messages, at least once, with retries and a dead letter.

Emails and webhooks travel in lanes of their own, each with its own slots (its concurrency) and
its own claims (FOR UPDATE SKIP LOCKED, of its kind of row only): slow webhook receivers never
hold up an email. A lane keeps every slot busy: a slot that frees starts the next claimed row at
once, and the lane claims ahead, a small batch whenever half its look-ahead is used up, so that
claiming costs a round trip per few rows, never a wait for the slowest of a batch. Within the
webhook lane, one endpoint takes only a few slots at a time. Outcomes are written in batches too:
whatever finished while the previous batch was being written goes in the next transaction.

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
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.outbox.email import EmailRenderer, EmailSender, email_sender
from backend.outbox.models import EMAIL_LANE, WEBHOOK_LANE
from backend.outbox.outbox import (
    EMAIL,
    REDACT,
    ClaimedMessage,
    Failure,
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


@dataclass(frozen=True, slots=True)
class Held:
    """A claimed row, waiting for a slot or being sent."""

    message: ClaimedMessage
    # The event loop's clock when the claim was asked for: the lease runs from (before) then.
    lease_from: float
    # The webhook endpoint it counts against, if any.
    endpoint: str | None


class Lane:
    """One kind of message: at most `size` sends in flight, and up to `lookahead` more rows
    claimed and waiting for a slot. A send that ends starts the next waiting row at once."""

    def __init__(
        self,
        name: str,
        size: int,
        lookahead: int,
        send: Callable[[Held], Coroutine[Any, Any, None]],
    ) -> None:
        # The lane's name is the lane its rows are in (backend/outbox/models.py).
        self.name = name
        self.size = size
        self.lookahead = lookahead
        self.waiting: deque[Held] = deque()
        self.sends: set[asyncio.Task[None]] = set()
        self._send = send
        self._changed = asyncio.Event()
        self.closed = False

    @property
    def room(self) -> int:
        """How many more rows the lane may hold (sending or waiting)."""
        return self.size + self.lookahead - len(self.sends) - len(self.waiting)

    @property
    def free_slots(self) -> int:
        return self.size - len(self.sends)

    def add(self, held: Held) -> None:
        self.waiting.append(held)
        self._start_waiting()

    def close(self) -> None:
        """Start nothing more (the rows waiting stay held, to be given back)."""
        self.closed = True
        self._changed.set()

    def take_waiting(self) -> list[Held]:
        waiting, self.waiting = list(self.waiting), deque()
        return waiting

    def _start_waiting(self) -> None:
        while self.waiting and self.free_slots > 0 and not self.closed:
            task = asyncio.create_task(self._send(self.waiting.popleft()))
            self.sends.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.sends.discard(task)
        self._start_waiting()
        self._changed.set()

    async def wait_for_room(self, at_least: int) -> None:
        """Until the lane may hold `at_least` more rows, or is closed."""
        while self.room < at_least and not self.closed:
            self._changed.clear()
            await self._changed.wait()

    async def idle(self) -> None:
        """Until nothing is waiting or in flight."""
        while self.waiting or self.sends:
            if self.sends:
                await asyncio.wait(list(self.sends))
            else:
                self._changed.clear()
                await self._changed.wait()


class Settlements:
    """Outcomes waiting to be written. One transaction writes every outcome that came in while
    the previous one was being written: one round trip per batch instead of one per message,
    and no added wait when only one is pending. The write runs in a task of its own, so a send
    cancelled at shutdown never cancels a statement half-way (and never poisons a connection)."""

    MAX_BATCH = 500

    def __init__(self, write: Callable[[list[uuid.UUID], list[Failure]], Awaitable[None]]) -> None:
        self._write = write
        self._pending: list[tuple[uuid.UUID | Failure, asyncio.Future[None]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def record(self, outcome: uuid.UUID | Failure) -> None:
        """Record a sent row (its id) or a failure; returns once written, raises if not."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, future))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_pending())
        await future

    async def flushed(self) -> None:
        """Until every outcome recorded so far is written (or failed to be)."""
        while self._writing is not None:
            await asyncio.wait([self._writing])

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.MAX_BATCH]
                del self._pending[: self.MAX_BATCH]
                sent = [outcome for outcome, _ in batch if isinstance(outcome, uuid.UUID)]
                failed = [outcome for outcome, _ in batch if isinstance(outcome, Failure)]
                try:
                    await self._write(sent, failed)
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._writing = None


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
            self._lane(EMAIL_LANE, settings.outbox_email_concurrency),
            self._lane(WEBHOOK_LANE, settings.outbox_webhook_concurrency),
        )
        # Webhook rows held (waiting or in flight) per endpoint id.
        self._endpoint_sends: Counter[str] = Counter()
        self._settlements = Settlements(self._write_outcomes)

    def _lane(self, name: str, size: int) -> Lane:
        # Claimed ahead: enough to start the next sends while the next claim is on its way.
        lookahead = min(size, self._settings.outbox_batch_size)
        return Lane(name, size, lookahead, self._settle)

    def periodic_tasks(self) -> list[Coroutine[Any, Any, None]]:
        """Work of the worker process that is not a message to send: each runs until
        `self.stopping` is set. Add new periodic work here."""
        return [
            run_expiry_sweeps(self._settings, self._sessionmaker, self._stopping),
            run_retention_purges(self._settings, self._sessionmaker, self._stopping),
        ]

    @property
    def stopping(self) -> asyncio.Event:
        return self._stopping

    def stop(self) -> None:
        """Stop claiming; sends in flight get a short grace, then are cancelled and given back."""
        self._stopping.set()
        for lane in self._lanes:
            lane.close()

    async def run(self) -> None:
        logger.info("outbox worker %s started", self.worker_id)
        try:
            await asyncio.gather(
                *(self._keep_busy(lane) for lane in self._lanes), *self.periodic_tasks()
            )
        finally:
            self.stop()
            await self._finish_sends()
            await self._give_back_rows()
            await self.aclose()
        logger.info("outbox worker %s stopped", self.worker_id)

    async def aclose(self) -> None:
        await self._sender.aclose()
        if self._owns_http:
            await self._http.aclose()

    async def run_once(self) -> int:
        """Claim what each lane has free slots for (a batch at most) and settle all of it;
        returns how many rows were taken. For tests and one-off runs: `run` keeps claiming."""
        taken = 0
        for lane in self._lanes:
            count, _ = await self._fill(
                lane, min(lane.free_slots, self._settings.outbox_batch_size)
            )
            taken += count
        await asyncio.gather(*(lane.idle() for lane in self._lanes))
        return taken

    # --- claiming ---------------------------------------------------------------------------

    async def _keep_busy(self, lane: Lane) -> None:
        """Keep the lane's slots busy and its look-ahead filled, until asked to stop. A claim
        waits for half the look-ahead to be used up (one round trip per few rows), never for a
        send to end."""
        refill_at = max(1, lane.lookahead // 2)
        while not self._stopping.is_set():
            await lane.wait_for_room(refill_at)
            if self._stopping.is_set():
                return
            wanted = min(lane.room, self._settings.outbox_batch_size)
            try:
                _, drained = await self._fill(lane, wanted)
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

    async def _fill(self, lane: Lane, wanted: int) -> tuple[int, bool]:
        """Claim up to `wanted` due rows for the lane; sends start as slots allow. Returns how
        many were taken, and whether the lane's queue ran dry (fewer rows due than wanted)."""
        if wanted <= 0:
            return 0, False
        # Taken before the claim, so this worker's idea of the lease never outlasts the database's.
        lease_from = asyncio.get_running_loop().time()
        async with self._sessionmaker() as session:
            claimed = await OutboxClaims(session, self.worker_id).claim(
                wanted,
                self._settings.outbox_lease_seconds,
                lane=lane.name,
                busy_endpoints=self._busy_endpoints(),
            )
        over_limit: list[uuid.UUID] = []
        for message in claimed:
            endpoint = self._endpoint_of(message)
            if lane.closed or not self._reserve_endpoint(endpoint):
                over_limit.append(message.id)
            else:
                lane.add(Held(message, lease_from, endpoint))
        if over_limit:
            # More rows for one endpoint than it may have in flight (another worker, or this
            # one once a slot of that endpoint frees, takes them), or claimed as the worker
            # was stopping.
            async with self._sessionmaker() as session:
                await OutboxClaims(session, self.worker_id).release(over_limit)
        return len(claimed) - len(over_limit), len(claimed) < wanted

    def _reserve_endpoint(self, endpoint: str | None) -> bool:
        """Count one more row for `endpoint`, unless it has as many as it may."""
        if endpoint is None:
            return True
        if self._endpoint_sends[endpoint] >= self._settings.webhook_endpoint_concurrency:
            return False
        self._endpoint_sends[endpoint] += 1
        return True

    def _unreserve_endpoint(self, endpoint: str | None) -> None:
        if endpoint is not None:
            self._endpoint_sends[endpoint] -= 1
            if self._endpoint_sends[endpoint] <= 0:
                del self._endpoint_sends[endpoint]

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
        for lane in self._lanes:
            lane.close()
            for held in lane.take_waiting():
                self._unreserve_endpoint(held.endpoint)
        sends = [send for lane in self._lanes for send in lane.sends]
        if sends:
            _, unfinished = await asyncio.wait(sends, timeout=self._shutdown_grace)
            for send in unfinished:
                send.cancel()
            if unfinished:
                logger.warning("outbox worker: %d sends cut short by shutdown", len(unfinished))
                await asyncio.wait(unfinished)
        # Outcomes already known are written before the rest is given back.
        await self._settlements.flushed()

    async def _give_back_rows(self) -> None:
        """Rows still held (sends cut short, claims not yet started) become due again now,
        rather than when their lease runs out."""
        try:
            async with self._sessionmaker() as session:
                await OutboxClaims(session, self.worker_id).release()
        except Exception:
            logger.warning("outbox worker: giving rows back failed; their leases will run out")

    # --- one message ------------------------------------------------------------------------

    async def _settle(self, held: Held) -> None:
        """Send the message while keeping its lease, then record the outcome."""
        message = held.message
        try:
            async with self._lease_kept(message.id, held.lease_from):
                failure = await self._attempt(message)
            if failure is None:
                await self._settlements.record(message.id)
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
            self._unreserve_endpoint(held.endpoint)

    @contextlib.asynccontextmanager
    async def _lease_kept(self, message_id: uuid.UUID, lease_from: float) -> AsyncIterator[None]:
        """Renew the row's lease while the block runs; stop the block (LeaseLost) before the
        lease runs out if it cannot be renewed, or at once if the row is no longer ours."""
        lease = self._settings.outbox_lease_seconds
        done = asyncio.Event()
        try:
            async with asyncio.timeout_at(lease_from + lease * LEASE_SAFETY) as deadline:
                keeper = asyncio.create_task(self._renew(message_id, lease_from, deadline, done))
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
        self,
        message_id: uuid.UUID,
        lease_from: float,
        deadline: asyncio.Timeout,
        done: asyncio.Event,
    ) -> None:
        lease = self._settings.outbox_lease_seconds
        loop = asyncio.get_running_loop()
        # A third of the lease after it began: the row may have waited for a slot.
        renew_at = lease_from + lease / 3
        while not await _set_within(done, max(0.0, renew_at - loop.time())):
            asked_at = loop.time()
            renew_at = asked_at + lease / 3
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

    async def _write_outcomes(self, sent: list[uuid.UUID], failed: list[Failure]) -> None:
        async with self._sessionmaker() as session:
            await OutboxClaims(session, self.worker_id).settle(sent, failed)

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
        await self._settlements.record(
            Failure(
                message.id,
                description,
                delay_seconds=delay,
                max_attempts=message.attempts if final else max_attempts,
            )
        )


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for the event; True if it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
