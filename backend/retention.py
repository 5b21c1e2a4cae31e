"""Retention: the worker deletes what has outlived its use, so storage follows traffic instead
of growing with every shipment ever made (issue 14). Shipments and their timelines are kept.

What goes, and the index each purge walks to find its oldest rows:
- webhook delivery attempts, WEBHOOK_DELIVERY_RETENTION_DAYS (30) after the attempt
  (ix_webhook_deliveries_created_at);
- events, the feed's window: EVENT_RETENTION_DAYS (30) after the event (ix_events_created_at);
- sent outbox messages, SENT_OUTBOX_RETENTION_DAYS (7) after sending
  (ix_outbox_messages_sent_at, partial: sent rows only);
- dead-lettered outbox messages, DEAD_OUTBOX_RETENTION_DAYS (30) after they were written
  (ix_outbox_messages_created_at, which nothing else uses);
- idempotency keys, IDEMPOTENCY_KEY_RETENTION_HOURS (24) after the first request
  (ix_idempotency_keys_created_at): a retry after that creates a new shipment.

Pending outbox messages are never deleted. Dead-lettered ones are kept at least as long as sent
ones (settings refuse otherwise): they are what an operator inspects after a failure. Deleting
an event deletes its delivery attempts (foreign key cascade, through
ix_webhook_deliveries_event_id), so the delivery log never outlives the feed.

Each kind is deleted oldest first, in batches of `batch_size` rows, each batch one short
transaction of one statement: its rows are chosen with FOR UPDATE SKIP LOCKED, so a row another
transaction holds (a worker recording a webhook attempt against its event) is skipped, never
waited for, and goes at the next run; several workers purging at once take disjoint rows. The
cut-off is fixed when a kind's purge starts, so rows ageing meanwhile wait for the next run,
and the worker stopping ends the purge after the batch in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.db import utcnow
from backend.outbox.models import OutboxMessage, RecordedEmail
from backend.shipments.models import IdempotencyRecord
from backend.webhooks.models import Event, WebhookDelivery

logger = logging.getLogger(__name__)

# Rows per transaction: small enough that a batch takes milliseconds and its row locks and WAL
# stay small, large enough that a day's rows go in a few hundred batches.
BATCH_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Kind:
    """Rows of one table that `age` makes deletable: `condition` (with `:cutoff`) picks them
    and `oldest_first` orders them along the index that finds them."""

    name: str
    table: str
    key: tuple[str, ...]
    condition: str
    oldest_first: str
    age: timedelta

    def batch(self) -> str:
        # Identifiers from this module only; the values are bound parameters.
        key = ", ".join(self.key)
        return (
            f"WITH gone AS (DELETE FROM {self.table} WHERE ({key}) IN ("  # noqa: S608
            f"SELECT {key} FROM {self.table} WHERE {self.condition} "
            f"ORDER BY {self.oldest_first} LIMIT :batch_size FOR UPDATE SKIP LOCKED) "
            "RETURNING 1) SELECT count(*) FROM gone"
        )


def retained_kinds(settings: Settings) -> tuple[Kind, ...]:
    outbox = OutboxMessage.__tablename__
    return (
        Kind(
            "webhook delivery attempts",
            WebhookDelivery.__tablename__,
            ("id",),
            "created_at < :cutoff",
            "created_at",
            timedelta(days=settings.webhook_delivery_retention_days),
        ),
        Kind(
            "events",
            Event.__tablename__,
            ("id",),
            "created_at < :cutoff",
            "created_at",
            timedelta(days=settings.event_retention_days),
        ),
        Kind(
            "sent outbox messages",
            outbox,
            ("id",),
            "status = 'sent' AND sent_at < :cutoff",
            "sent_at",
            timedelta(days=settings.sent_outbox_retention_days),
        ),
        Kind(
            "dead outbox messages",
            outbox,
            ("id",),
            "status = 'dead' AND created_at < :cutoff",
            "created_at",
            timedelta(days=settings.dead_outbox_retention_days),
        ),
        Kind(
            # Recorded instead of sent; kept as long as a sent email's outbox row.
            "recorded test emails",
            RecordedEmail.__tablename__,
            ("id",),
            "created_at < :cutoff",
            "created_at",
            timedelta(days=settings.sent_outbox_retention_days),
        ),
        Kind(
            "idempotency keys",
            IdempotencyRecord.__tablename__,
            ("seller_id", "key"),
            "created_at < :cutoff",
            "created_at",
            timedelta(hours=settings.idempotency_key_retention_hours),
        ),
    )


class RetentionPurge:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._kinds = retained_kinds(settings)
        self._batch_size = batch_size

    async def purge(self, stopping: asyncio.Event | None = None) -> dict[str, int]:
        """Delete every kind's rows older than its window, batch by batch, until none are
        left or `stopping` is set; returns how many of each kind went."""
        deleted: dict[str, int] = {}
        for kind in self._kinds:
            cutoff = utcnow() - kind.age
            deleted[kind.name] = 0
            while stopping is None or not stopping.is_set():
                in_batch = await self.purge_batch(kind, cutoff)
                deleted[kind.name] += in_batch
                if in_batch < self._batch_size:
                    break
            if deleted[kind.name]:
                logger.info("retention: deleted %d %s", deleted[kind.name], kind.name)
        return deleted

    async def purge_batch(self, kind: Kind, cutoff: datetime) -> int:
        """Delete up to `batch_size` of the kind's oldest rows older than `cutoff`, in one
        transaction; returns how many."""
        parameters = {"cutoff": cutoff, "batch_size": self._batch_size}
        async with self._sessionmaker() as session, session.begin():
            return int(await session.scalar(text(kind.batch()), parameters) or 0)


async def run_retention_purges(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], stopping: asyncio.Event
) -> None:
    """Purge every RETENTION_PURGE_SECONDS until `stopping` is set. A failed purge (the
    database restarting) is logged and tried again at the next interval."""
    purge = RetentionPurge(settings, sessionmaker)
    while not stopping.is_set():
        try:
            await purge.purge(stopping)
        except Exception:
            logger.exception("retention purge failed; trying again at the next interval")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), settings.retention_purge_seconds)
