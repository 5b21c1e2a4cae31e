"""Fixtures for the outbox and what it sends: a real SMTP server in-process, workers, outbox
helpers.

The SMTP server is aiosmtpd listening on 127.0.0.1 (a free port) on the test's own event loop,
so aiosmtplib talks real SMTP to it. It keeps every message it accepted, parsed with the
`email` package, and the Message-ID of every message it refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Protocol

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.context import app_context
from backend.db import create_sessionmaker, unit_of_work
from backend.outbox.outbox import enqueue_email
from backend.worker import OutboxWorker
from tests.conftest import make_settings

PUBLIC_BASE_URL = "https://track.example"
# Refused with a transient (4xx) reply: the sender is expected to try again later.
TRANSIENT_FAILURE = "451 4.3.0 Mailbox temporarily unavailable, try again later"


def parse_message(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def part(self, subtype: str) -> str:
        """The decoded text of the `text/<subtype>` part."""
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        assert body.get_content_type() == f"text/{subtype}"
        content = body.get_content()
        assert isinstance(content, str)
        return content


@dataclass
class RecordingHandler:
    """aiosmtpd handler: accepts (and records) or refuses each message at the end of DATA."""

    received: list[ReceivedMail] = field(default_factory=list)
    # Message-IDs of the messages refused, in order.
    refused: list[str] = field(default_factory=list)
    failures_left: int = 0
    always_fail: bool = False
    arrivals: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = parse_message(raw)
        if self.always_fail or self.failures_left > 0:
            self.failures_left = max(0, self.failures_left - 1)
            self.refused.append(str(message["Message-ID"]))
            return TRANSIENT_FAILURE
        assert envelope.mail_from is not None
        self.received.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message))
        async with self.arrivals:
            self.arrivals.notify_all()
        return "250 2.0.0 OK"


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler

    @property
    def received(self) -> list[ReceivedMail]:
        return self.handler.received

    @property
    def refused(self) -> list[str]:
        return self.handler.refused

    def fail_next(self, count: int) -> None:
        """Refuse the next `count` messages with a 4xx reply, then accept again."""
        self.handler.failures_left = count

    def fail_always(self) -> None:
        self.handler.always_fail = True

    def received_by(self, address: str) -> list[ReceivedMail]:
        """Messages accepted for `address` (sign-ups send account emails of their own)."""
        return [mail for mail in self.received if address in mail.rcpt_tos]

    async def wait_for(self, count: int) -> None:
        """Wait until at least `count` messages arrived (a guard against hanging, not a check)."""
        async with asyncio.timeout(10), self.handler.arrivals:
            await self.handler.arrivals.wait_for(lambda: len(self.received) >= count)


@pytest.fixture
async def smtp_server() -> AsyncIterator[SmtpServer]:
    handler = RecordingHandler()
    loop = asyncio.get_running_loop()
    # A fixed hostname: aiosmtpd would otherwise ask DNS for this machine's FQDN.
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="smtp.test", loop=loop), "127.0.0.1", 0
    )
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        server.close()
        await server.wait_closed()


class WorkerFactory(Protocol):
    def __call__(
        self,
        *,
        worker_id: str | None = None,
        sessionmaker: async_sessionmaker[AsyncSession] | None = None,
        **overrides: Any,
    ) -> OutboxWorker: ...


@pytest.fixture
def worker_settings(
    database_url: str, redis_url: str, smtp_server: SmtpServer
) -> WorkerSettingsFactory:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "email_backend": "smtp",
            "smtp_host": smtp_server.host,
            "smtp_port": smtp_server.port,
            "smtp_timeout_seconds": 5.0,
            "public_base_url": PUBLIC_BASE_URL,
            "outbox_lease_seconds": 30,
            "outbox_backoff_base_seconds": 0.01,
            "outbox_backoff_cap_seconds": 1.0,
            "worker_poll_seconds": 0.05,
            **overrides,
        }
        return make_settings(database_url, redis_url, **values)

    return build


class WorkerSettingsFactory(Protocol):
    def __call__(self, **overrides: Any) -> Settings: ...


@pytest.fixture
def make_worker(app: FastAPI, worker_settings: WorkerSettingsFactory) -> WorkerFactory:
    """Workers over the test app's sessionmaker, sending to `smtp_server` unless overridden."""

    def build(
        *,
        worker_id: str | None = None,
        sessionmaker: async_sessionmaker[AsyncSession] | None = None,
        **overrides: Any,
    ) -> OutboxWorker:
        return OutboxWorker(
            worker_settings(**overrides),
            sessionmaker or app_context(app).sessionmaker,
            worker_id=worker_id,
        )

    return build


# --- the outbox table ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: uuid.UUID
    kind: str
    shipment_id: uuid.UUID | None
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    claimed_by: str | None
    claimed_until: datetime | None
    last_error: str | None
    sent_at: datetime | None
    created_at: datetime

    @property
    def message_id(self) -> str:
        """The Message-ID header the worker gives this row's email."""
        return f"<{self.id.hex}@shiptrack>"


async def outbox_rows(
    engine: AsyncEngine, shipment_id: str | uuid.UUID | None = None
) -> list[OutboxRow]:
    """Every outbox row (or a shipment's), oldest first."""
    query = (
        "SELECT id, kind, shipment_id, payload, status, attempts, next_attempt_at, claimed_by,"
        " claimed_until, last_error, sent_at, created_at FROM outbox_messages"
    )
    parameters: dict[str, Any] = {}
    if shipment_id is not None:
        query += " WHERE shipment_id = :shipment_id"
        parameters["shipment_id"] = uuid.UUID(str(shipment_id))
    query += " ORDER BY created_at, id"
    async with engine.connect() as connection:
        rows = (await connection.execute(text(query), parameters)).all()
    return [OutboxRow(**row._asdict()) for row in rows]


async def drain(*workers: OutboxWorker) -> list[int]:
    """Run the workers' `run_once` side by side until none finds anything; returns their claims."""
    claimed = [0] * len(workers)
    while True:
        counts = await asyncio.gather(*(worker.run_once() for worker in workers))
        if not any(counts):
            return claimed
        claimed = [total + count for total, count in zip(claimed, counts, strict=True)]


async def outbox_row(engine: AsyncEngine, message_id: uuid.UUID) -> OutboxRow:
    rows = [row for row in await outbox_rows(engine) if row.id == message_id]
    assert len(rows) == 1, f"no outbox row {message_id}"
    return rows[0]


async def database_now(engine: AsyncEngine) -> datetime:
    """PostgreSQL's clock, the one next_attempt_at and claimed_until are computed with."""
    async with engine.connect() as connection:
        moment = (await connection.execute(text("SELECT clock_timestamp()"))).scalar_one()
    assert isinstance(moment, datetime)
    return moment


async def make_retries_due(engine: AsyncEngine) -> None:
    """Bring every retry forward to now, instead of sleeping through the backoff."""
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE outbox_messages SET next_attempt_at = now()"))


async def expire_claims(engine: AsyncEngine) -> None:
    """Let every lease run out, as if its holder had been gone for longer than the lease."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE outbox_messages SET claimed_until = now() - interval '1 second'"
                " WHERE claimed_until IS NOT NULL"
            )
        )


async def queue_emails(
    engine: AsyncEngine, count: int, *, to: str = "grace@example.com"
) -> list[uuid.UUID]:
    """Queue `count` 'delivered' emails in one committed transaction; returns their row ids."""
    async with unit_of_work(create_sessionmaker(engine)) as unit:
        return [
            enqueue_email(
                unit.session,
                "delivered",
                to,
                recipient_name="Grace Hopper",
                tracking_number=f"TEST{number:010d}",
                tracking_url=f"{PUBLIC_BASE_URL}/t/TEST{number:010d}",
                content=f"parcel {number}",
                partner_name="Speedy Couriers",
                review_url=f"{PUBLIC_BASE_URL}/t/TEST{number:010d}?review=token",
            )
            for number in range(count)
        ]
