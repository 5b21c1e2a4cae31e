"""The outbox worker against real PostgreSQL and a real SMTP server: delivery, retries with
backoff, the dead letter, concurrent workers, a worker that dies mid-batch, the file backend."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.context import app_context
from backend.db import unit_of_work
from backend.outbox.models import OutboxMessage, OutboxStatus
from backend.outbox.outbox import OutboxClaims, enqueue_email, retry_delay
from backend.worker import OutboxWorker
from tests.outbox.conftest import (
    PUBLIC_BASE_URL,
    RecordingHandler,
    SmtpServer,
    WorkerFactory,
    WorkerSettingsFactory,
    database_now,
    drain,
    expire_claims,
    make_retries_due,
    outbox_row,
    outbox_rows,
    parse_message,
    queue_emails,
)


def sessionmaker_of(app: FastAPI) -> async_sessionmaker[AsyncSession]:
    return app_context(app).sessionmaker


def engine_of(app: FastAPI) -> AsyncEngine:
    return app_context(app).engine


def sessions_of(app: FastAPI) -> async_sessionmaker[AsyncSession]:
    return app_context(app).sessionmaker


# --- delivery --------------------------------------------------------------------------------


async def test_a_queued_email_is_sent_once_and_marked_sent(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    [message_id] = await queue_emails(engine_of(app), 1, to="ada@example.com")
    worker = make_worker(email_from="Parcels <parcels@shop.example>")

    assert await worker.run_once() == 1

    [mail] = smtp_server.received
    assert mail.rcpt_tos == ["ada@example.com"]
    assert mail.mail_from == "parcels@shop.example"
    assert mail.message["To"] == "ada@example.com"
    assert mail.message["From"] == "Parcels <parcels@shop.example>"
    assert mail.message_id == f"<{message_id.hex}@shiptrack>"
    assert mail.message.get_content_type() == "multipart/alternative"
    assert "parcel 0" in mail.part("plain")
    assert "parcel 0" in mail.part("html")
    row = await outbox_row(db_engine, message_id)
    assert row.status == OutboxStatus.sent
    assert row.attempts == 1
    assert row.sent_at is not None
    assert row.claimed_by is None
    assert row.claimed_until is None
    assert row.last_error is None

    # Sent is final: another pass finds nothing, even when the row's time has come again.
    await make_retries_due(db_engine)
    assert await worker.run_once() == 0
    assert len(smtp_server.received) == 1


async def test_sent_messages_carry_the_headers_rfc_5322_requires(
    app: FastAPI,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    """RFC 5322 §3.6: the origination date (Date) and originator (From) are required."""
    await queue_emails(engine_of(app), 1)
    before = datetime.now(UTC).replace(microsecond=0)

    assert await make_worker().run_once() == 1

    [mail] = smtp_server.received
    assert mail.message["From"]
    date = mail.message["Date"]
    assert date is not None, f"no Date header in {mail.message.keys()}"
    sent = parsedate_to_datetime(str(date))
    assert sent.tzinfo is not None
    assert sent >= before - timedelta(minutes=5)


async def test_rows_queued_in_a_rolled_back_transaction_are_never_sent(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    class Abandoned(Exception):
        pass

    async def failing_change() -> None:
        async with unit_of_work(sessions_of(app)) as unit:
            # The row reaches PostgreSQL, then the change fails.
            enqueue_email(unit.session, "delivered", "ada@example.com", recipient_name="Ada")
            raise Abandoned

    with pytest.raises(Abandoned):
        await failing_change()

    assert await outbox_rows(db_engine) == []
    assert await make_worker().run_once() == 0
    assert smtp_server.received == []
    assert smtp_server.refused == []


async def test_a_worker_takes_at_most_a_batch_at_a_time(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    await queue_emails(engine_of(app), 7)
    worker = make_worker(outbox_batch_size=3)

    assert await worker.run_once() == 3
    assert len(smtp_server.received) == 3
    assert await worker.run_once() == 3
    assert await worker.run_once() == 1
    assert await worker.run_once() == 0
    assert len(smtp_server.received) == 7
    assert {row.status for row in await outbox_rows(db_engine)} == {OutboxStatus.sent}


# --- retries and the dead letter -------------------------------------------------------------


async def test_a_refused_message_is_retried_with_growing_backoff_until_accepted(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    [message_id] = await queue_emails(engine_of(app), 1)
    smtp_server.fail_next(2)
    # A large base so the delays are far apart from the time the test itself takes.
    worker = make_worker(outbox_backoff_base_seconds=60.0, outbox_backoff_cap_seconds=3600.0)
    delays: list[tuple[timedelta, timedelta]] = []  # (at least, at most) per failed attempt

    for attempt, (shortest, longest) in enumerate([(30, 60), (60, 120)], start=1):
        before = await database_now(db_engine)
        assert await worker.run_once() == 1
        after = await database_now(db_engine)

        row = await outbox_row(db_engine, message_id)
        assert row.status == OutboxStatus.pending
        assert row.attempts == attempt
        assert row.sent_at is None
        assert row.claimed_by is None
        assert row.last_error is not None
        assert "451" in row.last_error
        assert "temporarily unavailable" in row.last_error
        # Equal jitter: the delay after attempt n lies in [base*2^(n-1)/2, base*2^(n-1)].
        at_least, at_most = row.next_attempt_at - after, row.next_attempt_at - before
        assert at_most >= timedelta(seconds=shortest)
        assert at_least <= timedelta(seconds=longest)
        delays.append((at_least, at_most))

        # Not due yet: another pass neither claims nor sends it.
        assert await worker.run_once() == 0
        assert len(smtp_server.refused) == attempt
        await make_retries_due(db_engine)

    (_, first_at_most), (second_at_least, _) = delays
    assert second_at_least > first_at_most

    assert await worker.run_once() == 1
    [mail] = smtp_server.received
    row = await outbox_row(db_engine, message_id)
    assert row.status == OutboxStatus.sent
    assert row.attempts == 3
    assert row.sent_at is not None
    assert row.last_error is None
    # The same message each time: a receiver can tell a retry from a second email.
    assert smtp_server.refused == [row.message_id, row.message_id]
    assert mail.message_id == row.message_id


async def test_retries_of_many_messages_are_spread_by_jitter(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    await queue_emails(engine_of(app), 8)
    smtp_server.fail_always()
    worker = make_worker(outbox_backoff_base_seconds=600.0, outbox_backoff_cap_seconds=3600.0)

    before = await database_now(db_engine)
    assert await worker.run_once() == 8
    after = await database_now(db_engine)

    rows = await outbox_rows(db_engine)
    assert {row.attempts for row in rows} == {1}
    for row in rows:
        assert row.next_attempt_at - before >= timedelta(seconds=300)
        assert row.next_attempt_at - after <= timedelta(seconds=600)
    # Failed together, retried apart: the retry times spread over minutes, not milliseconds.
    retry_times = sorted(row.next_attempt_at for row in rows)
    assert retry_times[-1] - retry_times[0] > after - before + timedelta(seconds=1)


def test_retry_delay_is_exponential_with_equal_jitter_and_capped() -> None:
    for attempts in range(1, 10):
        ceiling = min(300.0, 10.0 * 2 ** (attempts - 1))
        delays = [retry_delay(attempts, base=10.0, cap=300.0) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays), attempts
        assert len(set(delays)) > 1, "no jitter"


async def test_a_message_is_dead_lettered_after_the_configured_attempts(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    [message_id] = await queue_emails(engine_of(app), 1)
    smtp_server.fail_always()
    worker = make_worker(outbox_max_attempts=2)

    assert await worker.run_once() == 1
    row = await outbox_row(db_engine, message_id)
    assert (row.status, row.attempts) == (OutboxStatus.pending, 1)

    await make_retries_due(db_engine)
    assert await worker.run_once() == 1
    row = await outbox_row(db_engine, message_id)
    assert row.status == OutboxStatus.dead
    assert row.attempts == 2
    assert row.sent_at is None
    assert row.claimed_by is None
    assert row.last_error is not None
    assert "451" in row.last_error

    # Dead is final: nothing claims it again, whatever its next_attempt_at says.
    await make_retries_due(db_engine)
    assert await worker.run_once() == 0
    assert await make_worker(outbox_max_attempts=5).run_once() == 0
    assert smtp_server.refused == [row.message_id, row.message_id]
    assert smtp_server.received == []
    assert (await outbox_row(db_engine, message_id)).attempts == 2


DELIVERY_CODE = "493817"


async def queue_delivery_code(app: FastAPI, to: str = "grace@example.com") -> uuid.UUID:
    """A delivery code email, queued as the shipment service queues it."""
    async with unit_of_work(sessions_of(app)) as unit:
        return enqueue_email(
            unit.session,
            "delivery_code",
            to,
            secret_fields=("verification_code",),
            recipient_name="Grace Hopper",
            tracking_number="TEST0000000000",
            tracking_url=f"{PUBLIC_BASE_URL}/t/TEST0000000000",
            verification_code=DELIVERY_CODE,
            expires_at_text="tomorrow at 18:00 UTC",
        )


async def stored_text(engine: AsyncEngine, message_id: uuid.UUID) -> str:
    async with engine.connect() as connection:
        row = await connection.execute(
            text(
                "SELECT payload::text, coalesce(last_error, '') FROM outbox_messages WHERE id = :id"
            ),
            {"id": message_id},
        )
        payload, last_error = row.one()
    return f"{payload} {last_error}"


async def test_a_dead_lettered_email_keeps_no_delivery_code(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    message_id = await queue_delivery_code(app)
    smtp_server.fail_always()
    worker = make_worker(outbox_max_attempts=2)

    await worker.run_once()
    # Still to be sent: the retry needs the code.
    assert DELIVERY_CODE in await stored_text(db_engine, message_id)

    await make_retries_due(db_engine)
    await worker.run_once()
    row = await outbox_row(db_engine, message_id)
    assert row.status == OutboxStatus.dead
    assert DELIVERY_CODE not in await stored_text(db_engine, message_id)
    assert row.payload["template"] == "delivery_code"  # what it was stays known
    assert len(smtp_server.refused) == 2


async def test_the_file_backend_logs_no_delivery_code(
    app: FastAPI,
    db_engine: AsyncEngine,
    worker_settings: WorkerSettingsFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    message_id = await queue_delivery_code(app)
    worker = OutboxWorker(
        worker_settings(email_backend="file", data_dir=tmp_path), sessionmaker_of(app)
    )

    assert await worker.run_once() == 1

    [written] = list((tmp_path / "mail").glob("*.eml"))
    message = parse_message(written.read_bytes())
    plain = message.get_body(preferencelist=("plain",))
    assert plain is not None
    assert DELIVERY_CODE in plain.get_content()  # the recipient still gets it
    assert DELIVERY_CODE not in message["Subject"]
    assert caplog.records, "the file backend logs each message"
    assert all(DELIVERY_CODE not in record.getMessage() for record in caplog.records)
    assert DELIVERY_CODE not in await stored_text(db_engine, message_id)


async def test_an_unknown_kind_is_dead_lettered_at_once(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    async with sessionmaker_of(app)() as session, session.begin():
        message = OutboxMessage(kind="carrier_pigeon", payload={"to": "ada@example.com"})
        session.add(message)
    worker = make_worker(outbox_max_attempts=12)

    assert await worker.run_once() == 1

    row = await outbox_row(db_engine, message.id)
    assert row.status == OutboxStatus.dead
    assert row.attempts == 1
    assert row.last_error is not None
    assert "carrier_pigeon" in row.last_error
    await make_retries_due(db_engine)
    assert await worker.run_once() == 0
    assert smtp_server.received == []
    assert smtp_server.refused == []


async def test_an_unreachable_smtp_server_is_a_retry_not_a_loss(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    [message_id] = await queue_emails(engine_of(app), 1)
    # Port 1 on loopback: nothing listens there, the connection is refused.
    assert await make_worker(smtp_port=1).run_once() == 1

    row = await outbox_row(db_engine, message_id)
    assert row.status == OutboxStatus.pending
    assert row.attempts == 1
    assert row.last_error

    await make_retries_due(db_engine)
    assert await make_worker().run_once() == 1
    [mail] = smtp_server.received
    assert mail.message_id == row.message_id
    assert (await outbox_row(db_engine, message_id)).status == OutboxStatus.sent


async def test_smtp_connections_are_kept_and_one_closed_while_idle_costs_no_attempt(
    app: FastAPI,
    db_engine: AsyncEngine,
    make_worker: WorkerFactory,
) -> None:
    handler = RecordingHandler()
    connections = 0
    loop = asyncio.get_running_loop()

    def new_connection() -> SMTP:
        nonlocal connections
        connections += 1
        # This server hangs up on a client that stays silent for half a second.
        return SMTP(handler, hostname="smtp.test", loop=loop, timeout=0.5)

    server = await loop.create_server(new_connection, "127.0.0.1", 0)
    worker = make_worker(smtp_port=server.sockets[0].getsockname()[1], outbox_email_concurrency=1)
    try:
        queued = await queue_emails(engine_of(app), 3)
        assert await worker.run_once() == 1
        assert await worker.run_once() == 1
        assert connections == 1  # the second email went over the first one's connection

        await asyncio.sleep(1.0)  # long enough for the server to hang up on the idle connection
        assert await worker.run_once() == 1
    finally:
        await worker.aclose()
        server.close()
        await server.wait_closed()

    assert connections == 2
    assert sorted(mail.message_id for mail in handler.received) == sorted(
        f"<{message_id.hex}@shiptrack>" for message_id in queued
    )
    rows = await outbox_rows(db_engine)
    assert {(row.status, row.attempts) for row in rows} == {(OutboxStatus.sent, 1)}


# --- several workers ---------------------------------------------------------------------------


async def test_two_workers_at_once_send_every_message_exactly_once(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    queued = await queue_emails(engine_of(app), 40)
    first = make_worker(worker_id="worker-1", outbox_batch_size=7)
    second = make_worker(worker_id="worker-2", outbox_batch_size=7)

    claimed = await drain(first, second)

    assert sum(claimed) == 40
    assert all(count > 0 for count in claimed), claimed  # both did part of the work
    message_ids = [mail.message_id for mail in smtp_server.received]
    assert len(message_ids) == 40
    assert len(set(message_ids)) == 40
    assert set(message_ids) == {f"<{message_id.hex}@shiptrack>" for message_id in queued}
    rows = await outbox_rows(db_engine)
    assert {row.status for row in rows} == {OutboxStatus.sent}
    assert {row.attempts for row in rows} == {1}  # no row was claimed twice


async def test_running_workers_deliver_everything_and_stop_when_asked(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    workers = [make_worker(outbox_batch_size=5, worker_poll_seconds=0.05) for _ in range(3)]
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        # Queued while the workers are already polling.
        queued = await queue_emails(engine_of(app), 40)
        await smtp_server.wait_for(40)
    finally:
        for worker in workers:
            worker.stop()
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks)

    message_ids = [mail.message_id for mail in smtp_server.received]
    assert sorted(message_ids) == sorted(f"<{message_id.hex}@shiptrack>" for message_id in queued)
    rows = await outbox_rows(db_engine)
    assert {row.status for row in rows} == {OutboxStatus.sent}
    assert {row.attempts for row in rows} == {1}


# --- a worker that dies mid-batch ------------------------------------------------------------


async def test_a_worker_killed_mid_batch_loses_nothing(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    queued = await queue_emails(engine_of(app), 5)
    # Worker A claims a batch, as `run_once` would, and dies before settling any of it.
    async with sessionmaker_of(app)() as session:
        dead_claims = await OutboxClaims(session, "worker-a").claim(batch_size=20, lease_seconds=5)
    assert sorted(message.id for message in dead_claims) == sorted(queued)
    worker_b = make_worker(worker_id="worker-b")

    # While A's lease holds, its rows are A's: B takes none of them.
    assert await worker_b.run_once() == 0
    assert smtp_server.received == []
    rows = await outbox_rows(db_engine)
    assert {row.claimed_by for row in rows} == {"worker-a"}

    await expire_claims(db_engine)
    assert await worker_b.run_once() == 5
    message_ids = [mail.message_id for mail in smtp_server.received]
    assert sorted(message_ids) == sorted(f"<{message_id.hex}@shiptrack>" for message_id in queued)
    settled = {row.id: row for row in await outbox_rows(db_engine)}
    assert {row.status for row in settled.values()} == {OutboxStatus.sent}
    assert {row.attempts for row in settled.values()} == {2}

    # A comes back to life and reports on its stale batch: B's outcome stands.
    for message in dead_claims:
        async with sessionmaker_of(app)() as session:
            late = OutboxClaims(session, "worker-a")
            await late.mark_failed(message.id, "late failure", delay_seconds=0, max_attempts=1)
            await late.mark_sent(message.id)
    assert {row.id: row for row in await outbox_rows(db_engine)} == settled
    assert await worker_b.run_once() == 0
    assert len(smtp_server.received) == 5


async def test_a_stale_worker_cannot_settle_rows_another_worker_holds(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
) -> None:
    [message_id] = await queue_emails(engine_of(app), 1)
    sessionmaker = sessionmaker_of(app)
    async with sessionmaker() as session:
        assert len(await OutboxClaims(session, "worker-a").claim(20, 5)) == 1
    await expire_claims(db_engine)
    async with sessionmaker() as session:
        [taken_over] = await OutboxClaims(session, "worker-b").claim(20, 60)
    assert taken_over.id == message_id
    assert taken_over.attempts == 2

    # A's late verdicts, while B holds the row: neither lands.
    async with sessionmaker() as session:
        await OutboxClaims(session, "worker-a").mark_failed(
            message_id, "late failure", delay_seconds=0, max_attempts=1
        )
    async with sessionmaker() as session:
        await OutboxClaims(session, "worker-a").mark_sent(message_id)
    row = await outbox_row(db_engine, message_id)
    assert row.status == OutboxStatus.pending
    assert row.claimed_by == "worker-b"
    assert row.last_error is None
    assert row.sent_at is None

    async with sessionmaker() as session:
        await OutboxClaims(session, "worker-b").mark_sent(message_id)
    row = await outbox_row(db_engine, message_id)
    assert row.status == OutboxStatus.sent
    assert row.sent_at is not None
    assert smtp_server.received == []  # only claims here; nothing was sent through SMTP


# --- the development default -------------------------------------------------------------------


async def test_the_file_backend_writes_each_message_as_an_eml_file(
    app: FastAPI,
    db_engine: AsyncEngine,
    worker_settings: WorkerSettingsFactory,
    smtp_server: SmtpServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="backend.outbox.email")
    [message_id] = await queue_emails(engine_of(app), 1, to="ada@example.com")
    settings = worker_settings(email_backend="file", data_dir=tmp_path)
    worker = OutboxWorker(settings, sessionmaker_of(app))

    assert await worker.run_once() == 1

    files = list((tmp_path / "mail").glob("*.eml"))
    assert len(files) == 1
    message = parse_message(files[0].read_bytes())
    assert message["To"] == "ada@example.com"
    assert message["From"] == settings.email_from
    assert message["Message-ID"] == f"<{message_id.hex}@shiptrack>"
    assert message["Subject"] == "Parcel TEST0000000000 was delivered"
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert f"{PUBLIC_BASE_URL}/t/TEST0000000000" in plain.get_content()
    assert f'href="{PUBLIC_BASE_URL}/t/TEST0000000000"' in html.get_content()
    lines = [r for r in caplog.records if r.name == "backend.outbox.email"]
    assert len(lines) == 1
    assert "ada@example.com" in lines[0].getMessage()
    assert smtp_server.received == []  # the file backend never talks SMTP
    assert (await outbox_row(db_engine, message_id)).status == OutboxStatus.sent


async def test_a_template_error_is_recorded_and_retried(
    app: FastAPI,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    async with unit_of_work(sessions_of(app)) as unit:
        # 'delivered' needs partner_name, tracking_url and more: a missing variable is a bug.
        enqueue_email(unit.session, "delivered", "ada@example.com", recipient_name="Ada")
    [row] = await outbox_rows(db_engine)

    assert await make_worker().run_once() == 1

    row = await outbox_row(db_engine, row.id)
    assert row.status == OutboxStatus.pending
    assert row.last_error is not None
    assert "UndefinedError" in row.last_error
    assert smtp_server.received == []
