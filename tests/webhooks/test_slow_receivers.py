"""Hostile webhook receivers against a running worker, real PostgreSQL, a real SMTP server and
a real HTTP receiver on loopback: one that answers a byte at a time for ever, one that answers
with a body of 100 MB, one slower than the worker's lease. None of them may hold up other
sellers' emails and webhooks, blow up the worker's memory, or get a row sent by two workers."""

from __future__ import annotations

import asyncio
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.worker import OutboxWorker
from tests.outbox.conftest import (
    OutboxRow,
    SmtpServer,
    outbox_rows,
)
from tests.shipments.factories import create_shipment, make_parties
from tests.webhooks.conftest import HookWorkerFactory
from tests.webhooks.receiver import HooksApp, Receiver, register_endpoint

HUGE_ANSWER_BYTES = 100 * 1024 * 1024


Start = Callable[[OutboxWorker], "asyncio.Task[None]"]


@pytest.fixture
async def running() -> AsyncIterator[Start]:
    """Starts workers' `run` loops; any still running at the end are stopped."""
    started: dict[OutboxWorker, asyncio.Task[None]] = {}

    def start(worker: OutboxWorker) -> asyncio.Task[None]:
        started[worker] = asyncio.create_task(worker.run())
        return started[worker]

    yield start
    for worker in started:
        worker.stop()
    async with asyncio.timeout(15):
        await asyncio.gather(*started.values())


async def eventually(condition: Callable[[], Awaitable[bool]], *, within: float) -> None:
    """Wait until `condition` holds; `within` is a guard against hanging, not a measurement."""
    async with asyncio.timeout(within):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.02)  # some conditions are rows in PostgreSQL: polled


async def webhook_rows(engine: AsyncEngine, endpoint_id: str) -> list[OutboxRow]:
    return [
        row
        for row in await outbox_rows(engine)
        if row.kind == "webhook" and row.payload["endpoint_id"] == endpoint_id
    ]


async def delivery_attempts(engine: AsyncEngine, endpoint_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT attempt, succeeded, status_code, error FROM webhook_deliveries"
                " WHERE endpoint_id = :id ORDER BY created_at"
            ),
            {"id": uuid.UUID(endpoint_id)},
        )
        return [dict(row._mapping) for row in rows]


async def test_a_trickling_receiver_holds_up_neither_emails_nor_other_sellers_webhooks(
    hooks: HooksApp,
    receiver: Receiver,
    smtp_server: SmtpServer,
    hook_worker: HookWorkerFactory,
    running: Start,
    db_engine: AsyncEngine,
) -> None:
    receiver.trickle("/slow")
    slow_seller = await make_parties(hooks.client)
    slow = await register_endpoint(hooks.client, slow_seller.seller_headers, receiver.url("/slow"))
    for _ in range(4):
        await create_shipment(hooks.client, slow_seller.seller_headers)
    # The production attempt deadline (10 s) and two attempts per endpoint at once.
    worker = hook_worker()
    worker_running = running(worker)

    async def slow_endpoint_saturated() -> bool:
        return receiver.in_flight["/slow"] == 2

    await eventually(slow_endpoint_saturated, within=5)

    other_seller = await make_parties(hooks.client)
    await register_endpoint(hooks.client, other_seller.seller_headers, receiver.url("/other"))
    shipment = await create_shipment(hooks.client, other_seller.seller_headers)
    recipient = shipment["recipient"]["email"]

    async def other_seller_served() -> bool:
        return bool(receiver.received_at("/other")) and bool(smtp_server.received_by(recipient))

    await eventually(other_seller_served, within=2)

    [webhook] = receiver.received_at("/other")
    assert webhook.json()["data"]["shipment_id"] == shipment["id"]
    [email] = smtp_server.received_by(recipient)
    assert shipment["tracking_number"] in email.subject
    # Meanwhile the slow endpoint still holds two attempts, and never had more.
    assert receiver.in_flight["/slow"] == 2
    assert receiver.most_in_flight["/slow"] == 2
    assert len(receiver.received_at("/slow")) == 2

    # SIGTERM: the worker stops well within an attempt's deadline, cutting both attempts short.
    worker.stop()
    async with asyncio.timeout(5):
        await worker_running

    async def receiver_hung_up_on() -> bool:
        return receiver.in_flight["/slow"] == 0

    await eventually(receiver_hung_up_on, within=2)
    rows = await webhook_rows(db_engine, slow["id"])
    assert len(rows) == 4
    # Nothing is lost: every row is pending, held by nobody, and no attempt counted.
    assert {(row.status, row.claimed_by, row.attempts) for row in rows} == {("pending", None, 0)}


async def test_a_full_webhook_lane_never_delays_an_email(
    hooks: HooksApp,
    receiver: Receiver,
    smtp_server: SmtpServer,
    hook_worker: HookWorkerFactory,
    running: Start,
) -> None:
    receiver.trickle("/slow")
    slow_seller = await make_parties(hooks.client)
    await register_endpoint(hooks.client, slow_seller.seller_headers, receiver.url("/slow"))
    await create_shipment(hooks.client, slow_seller.seller_headers)
    running(hook_worker(outbox_webhook_concurrency=1))

    async def webhook_lane_full() -> bool:
        return receiver.in_flight["/slow"] == 1

    await eventually(webhook_lane_full, within=5)
    other_seller = await make_parties(hooks.client)
    shipment = await create_shipment(hooks.client, other_seller.seller_headers)
    recipient = shipment["recipient"]["email"]

    async def email_sent() -> bool:
        return bool(smtp_server.received_by(recipient))

    await eventually(email_sent, within=2)
    assert receiver.in_flight["/slow"] == 1  # the webhook lane is still taken


async def test_an_attempt_ends_at_its_deadline_and_is_retried(
    hooks: HooksApp,
    receiver: Receiver,
    hook_worker: HookWorkerFactory,
    db_engine: AsyncEngine,
) -> None:
    receiver.trickle("/slow", every=0.1)
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url("/slow"))
    await create_shipment(hooks.client, parties.seller_headers)
    worker = hook_worker(webhook_timeout_seconds=1)

    async with asyncio.timeout(10):
        await worker.run_once()

    [attempt] = await delivery_attempts(db_engine, endpoint["id"])
    assert attempt["succeeded"] is False
    assert attempt["status_code"] is None
    assert "No complete answer within 1 s" in attempt["error"]
    [row] = await webhook_rows(db_engine, endpoint["id"])
    assert (row.status, row.attempts, row.claimed_by) == ("pending", 1, None)
    assert row.last_error


async def test_a_huge_answer_is_read_only_up_to_the_cap(
    hooks: HooksApp,
    receiver: Receiver,
    hook_worker: HookWorkerFactory,
    db_engine: AsyncEngine,
) -> None:
    receiver.huge("/huge", HUGE_ANSWER_BYTES)
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url("/huge"))
    await create_shipment(hooks.client, parties.seller_headers)
    worker = hook_worker()

    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        async with asyncio.timeout(20):
            await worker.run_once()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # The answer was a 200: the delivery counts, though its body was never read to the end.
    [attempt] = await delivery_attempts(db_engine, endpoint["id"])
    assert (attempt["succeeded"], attempt["status_code"]) == (True, 200)
    [row] = await webhook_rows(db_engine, endpoint["id"])
    assert row.status == "sent"
    assert peak - before < HUGE_ANSWER_BYTES // 20, f"peak {peak - before} bytes"
    assert receiver.body_bytes_sent["/huge"] < HUGE_ANSWER_BYTES // 2


async def test_no_row_is_sent_by_two_workers_when_an_attempt_outlasts_the_lease(
    hooks: HooksApp,
    receiver: Receiver,
    hook_worker: HookWorkerFactory,
    running: Start,
    db_engine: AsyncEngine,
) -> None:
    # Each answer takes three leases: without renewal, the other worker would take the row
    # over and send it again.
    receiver.delay("/slow", 3.0)
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url("/slow"))
    await create_shipment(hooks.client, parties.seller_headers)
    for number in range(2):
        running(hook_worker(worker_id=f"worker-{number}", outbox_lease_seconds=1))

    async def delivered() -> bool:
        return [row.status for row in await webhook_rows(db_engine, endpoint["id"])] == ["sent"]

    await eventually(delivered, within=15)

    assert len(receiver.received_at("/slow")) == 1
    [row] = await webhook_rows(db_engine, endpoint["id"])
    assert row.attempts == 1
    [attempt] = await delivery_attempts(db_engine, endpoint["id"])
    assert (attempt["attempt"], attempt["succeeded"]) == (1, True)


async def test_a_worker_that_loses_its_row_stops_sending_it(
    hooks: HooksApp,
    receiver: Receiver,
    hook_worker: HookWorkerFactory,
    db_engine: AsyncEngine,
) -> None:
    receiver.delay("/slow", 8.0)
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url("/slow"))
    await create_shipment(hooks.client, parties.seller_headers)
    stalled = hook_worker(worker_id="stalled", outbox_lease_seconds=3)
    sending = asyncio.create_task(stalled.run_once())

    async def sending_started() -> bool:
        return receiver.in_flight["/slow"] == 1

    await eventually(sending_started, within=5)
    # As if the worker had stalled past its lease: another worker has taken the row over.
    async with db_engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE outbox_messages SET claimed_by = 'successor',"
                " claimed_until = now() + interval '1 minute', attempts = attempts + 1"
                " WHERE kind = 'webhook'"
            )
        )

    # At its next renewal the first worker finds the row gone and hangs up, without a verdict.
    async with asyncio.timeout(6):
        await sending
    assert await delivery_attempts(db_engine, endpoint["id"]) == []
    [row] = await webhook_rows(db_engine, endpoint["id"])
    assert (row.status, row.claimed_by, row.last_error) == ("pending", "successor", None)
    assert row.attempts == 2
