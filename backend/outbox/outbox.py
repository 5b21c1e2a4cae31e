"""Writing to the outbox, and the worker's side of it: claim, complete, retry, dead-letter."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.db import utcnow
from backend.outbox.models import LANE_OF_ROW, OutboxMessage, RecordedEmail

EMAIL = "email"
# Payload key listing the fields (secrets: a delivery code, a reset token) to erase once a message
# is sent or dead-lettered. Templates keep them out of the subject, which is logged.
REDACT = "redact_after_send"


def enqueue(
    session: AsyncSession,
    kind: str,
    payloads: list[dict[str, Any]],
    *,
    shipment_id: uuid.UUID | None = None,
    not_before: datetime | None = None,
) -> list[uuid.UUID]:
    """Queue messages in the session's transaction: they are sent only if it commits, and not
    before `not_before` when it is given. Returns the messages' ids. The rows are written at the
    session's next flush (the commit at the latest)."""
    now = utcnow()
    messages = [
        OutboxMessage(
            kind=kind,
            shipment_id=shipment_id,
            payload=payload,
            next_attempt_at=max(now, not_before) if not_before else now,
            created_at=now,
        )
        for payload in payloads
    ]
    session.add_all(messages)
    return [message.id for message in messages]


def enqueue_email(
    session: AsyncSession,
    template: str,
    to: str,
    *,
    shipment_id: uuid.UUID | None = None,
    secret_fields: tuple[str, ...] = (),
    not_before: datetime | None = None,
    **context: Any,
) -> uuid.UUID:
    """Queue an email in the caller's transaction: it is sent only if that transaction commits.
    Returns the message's id.

    `context` must be JSON-serializable; it is what the template sees. `secret_fields` name
    context values (a delivery code) erased from the stored row once the email is sent.
    `not_before` defers it (a sender over its hourly budget): it waits, it is never dropped.
    """
    payload = {"template": template, "to": to, **context, REDACT: list(secret_fields)}
    [message_id] = enqueue(
        session, EMAIL, [payload], shipment_id=shipment_id, not_before=not_before
    )
    return message_id


def record_email(
    session: AsyncSession,
    template: str,
    to: str,
    *,
    seller_id: uuid.UUID,
    shipment_id: uuid.UUID,
    **context: Any,
) -> None:
    """Record an email about test data instead of queueing it: nothing is ever sent to a test
    shipment's recipient (product.md §11.2). Its seller reads it at `GET /test/emails`."""
    session.add(
        RecordedEmail(
            seller_id=seller_id,
            shipment_id=shipment_id,
            template=template,
            to=to,
            context=context,
            created_at=utcnow(),
        )
    )


async def last_recorded_value(
    session: AsyncSession, shipment_id: uuid.UUID, template: str, name: str
) -> str | None:
    """A value of the newest email of `template` recorded about a test shipment."""
    statement = (
        select(col(RecordedEmail.context)[name].astext)
        .where(
            col(RecordedEmail.shipment_id) == shipment_id, col(RecordedEmail.template) == template
        )
        .order_by(col(RecordedEmail.created_at).desc(), col(RecordedEmail.id).desc())
        .limit(1)
    )
    value: str | None = await session.scalar(statement)
    return value


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt to record: retried after `delay_seconds`, or dead once the row has had
    `max_attempts` attempts."""

    message_id: uuid.UUID
    error: str
    delay_seconds: float
    max_attempts: int


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    # Including this one.
    attempts: int
    created_at: datetime


# Due rows that nobody holds (or whose holder's lease ran out), oldest first, of one lane (or of
# any), skipping rows for the endpoints in `busy`. SKIP LOCKED lets concurrent workers take
# disjoint rows instead of queueing behind each other.
_CLAIM = """
    UPDATE outbox_messages AS m
    SET claimed_by = :worker,
        claimed_until = now() + make_interval(secs => :lease_seconds),
        attempts = m.attempts + 1
    FROM (
        SELECT id FROM outbox_messages
        WHERE status = 'pending' AND next_attempt_at <= now()
          AND (claimed_until IS NULL OR claimed_until < now())
          {lane}
          AND COALESCE(payload ->> 'endpoint_id', '') <> ALL(CAST(:busy AS text[]))
        ORDER BY next_attempt_at
        LIMIT :batch_size
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE m.id = due.id
    RETURNING m.id, m.kind, m.payload, m.attempts, m.created_at
    """
_CLAIM_ANY = text(_CLAIM.format(lane=""))
# The lane's condition as written in the index, so that the claim walks that lane's rows only.
_CLAIM_LANE = text(_CLAIM.format(lane=f"AND {LANE_OF_ROW} = :lane"))
# Renewal and release, like settling, only touch rows this worker still holds.
_RENEW = text(
    """
    UPDATE outbox_messages
    SET claimed_until = now() + make_interval(secs => :lease_seconds)
    WHERE id = :id AND claimed_by = :worker AND status = 'pending'
    RETURNING id
    """
)
# Given back unsent and due at once; the interrupted attempt does not count against the cap.
_RELEASE = text(
    """
    UPDATE outbox_messages
    SET claimed_by = NULL, claimed_until = NULL, attempts = attempts - 1
    WHERE claimed_by = :worker AND status = 'pending'
      AND (CAST(:ids AS uuid[]) IS NULL OR id = ANY(CAST(:ids AS uuid[])))
    """
)
# Only the current holder may settle a row: a worker whose lease expired must not overwrite the
# outcome of the worker that took the row over. A row that is settled for good, sent or dead,
# keeps no secret (the fields `redact_after_send` names): nothing will send it again.
_MARK_SENT = text(
    """
    UPDATE outbox_messages
    SET status = 'sent', sent_at = now(), claimed_by = NULL, claimed_until = NULL,
        last_error = NULL,
        payload = payload - ARRAY(
            SELECT jsonb_array_elements_text(COALESCE(payload -> 'redact_after_send', '[]'))
        )
    WHERE id = ANY(CAST(:ids AS uuid[])) AND claimed_by = :worker
    """
)
_MARK_FAILED = text(
    """
    UPDATE outbox_messages
    SET status = CASE WHEN attempts >= :max_attempts THEN 'dead' ELSE 'pending' END,
        payload = CASE WHEN attempts >= :max_attempts
            THEN payload - ARRAY(
                SELECT jsonb_array_elements_text(COALESCE(payload -> 'redact_after_send', '[]'))
            )
            ELSE payload END,
        next_attempt_at = now() + make_interval(secs => :delay_seconds),
        claimed_by = NULL, claimed_until = NULL, last_error = :error
    WHERE id = :id AND claimed_by = :worker
    """
)


def retry_delay(attempts: int, *, base: float, cap: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, never above `cap`."""
    ceiling = min(cap, base * 2.0 ** (attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not security


class OutboxClaims:
    """The worker's queries. Each call is its own short transaction."""

    def __init__(self, session: AsyncSession, worker_id: str) -> None:
        self._session = session
        self._worker = worker_id

    async def claim(
        self,
        batch_size: int,
        lease_seconds: int,
        *,
        lane: str | None = None,
        busy_endpoints: Sequence[str] = (),
    ) -> list[ClaimedMessage]:
        """Take up to `batch_size` due rows for `lease_seconds`, of `lane` (EMAIL_LANE or
        WEBHOOK_LANE) or of any; none for the webhook endpoints in `busy_endpoints`."""
        parameters = {
            "worker": self._worker,
            "lease_seconds": lease_seconds,
            "batch_size": batch_size,
            "busy": list(busy_endpoints),
        }
        statement = _CLAIM_ANY
        if lane is not None:
            statement, parameters["lane"] = _CLAIM_LANE, lane
        async with self._session.begin():
            rows = await self._session.execute(statement, parameters)
            return [
                ClaimedMessage(row.id, row.kind, row.payload, row.attempts, row.created_at)
                for row in rows
            ]

    async def renew(self, message_id: uuid.UUID, lease_seconds: int) -> bool:
        """Extend the lease on a row in hand; False when the row is no longer this worker's."""
        async with self._session.begin():
            renewed = await self._session.execute(
                _RENEW, {"id": message_id, "worker": self._worker, "lease_seconds": lease_seconds}
            )
            return renewed.first() is not None

    async def release(self, message_ids: Sequence[uuid.UUID] | None = None) -> None:
        """Give rows back unsent (these, or every row this worker holds), due at once."""
        ids = None if message_ids is None else list(message_ids)
        async with self._session.begin():
            await self._session.execute(_RELEASE, {"worker": self._worker, "ids": ids})

    async def mark_sent(self, message_id: uuid.UUID) -> None:
        await self.settle([message_id], [])

    async def mark_failed(
        self, message_id: uuid.UUID, error: str, *, delay_seconds: float, max_attempts: int
    ) -> None:
        await self.settle([], [Failure(message_id, error, delay_seconds, max_attempts)])

    async def settle(self, sent: Sequence[uuid.UUID], failed: Sequence[Failure]) -> None:
        """Record outcomes in one transaction: the rows in `sent` are done, those in `failed`
        retried later or dead-lettered. Rows this worker no longer holds are left alone."""
        async with self._session.begin():
            if sent:
                await self._session.execute(_MARK_SENT, {"ids": list(sent), "worker": self._worker})
            if failed:
                await self._session.execute(
                    _MARK_FAILED,
                    [
                        {
                            "id": failure.message_id,
                            "worker": self._worker,
                            "error": failure.error[:2000],
                            "delay_seconds": failure.delay_seconds,
                            "max_attempts": failure.max_attempts,
                        }
                        for failure in failed
                    ],
                )
