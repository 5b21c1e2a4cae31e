"""The worker's lanes keep their slots busy: N sends in flight at once with concurrency N, a slot
that frees takes the next row without waiting for the rest of a batch, and webhooks that wait on
a slow receiver never hold up an email. Real PostgreSQL, SMTP and HTTP on loopback; every check
is on what arrived and in what order, never on elapsed time (timeouts only guard against hangs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.worker import OutboxWorker
from tests.outbox.conftest import SmtpServer, outbox_rows
from tests.shipments.factories import create_shipment, make_parties
from tests.webhooks.conftest import HookWorkerFactory
from tests.webhooks.receiver import HooksApp, Receiver, register_endpoint


@pytest.fixture
async def start() -> AsyncIterator[Callable[[OutboxWorker], None]]:
    """Runs workers' `run` loops; stops them at the end of the test."""
    started: dict[OutboxWorker, asyncio.Task[None]] = {}

    def run(worker: OutboxWorker) -> None:
        started[worker] = asyncio.create_task(worker.run())

    yield run
    for worker in started:
        worker.stop()
    async with asyncio.timeout(15):
        await asyncio.gather(*started.values())


async def eventually(condition: Callable[[], Awaitable[bool] | bool], *, within: float) -> None:
    """Wait until `condition` holds; `within` guards against hanging, it measures nothing."""
    async with asyncio.timeout(within):
        while True:
            outcome = condition()
            if outcome if isinstance(outcome, bool) else await outcome:
                return
            await asyncio.sleep(0.02)


async def sent_webhooks(engine: AsyncEngine, endpoint_id: str) -> int:
    return sum(
        1
        for row in await outbox_rows(engine)
        if row.kind == "webhook"
        and row.payload["endpoint_id"] == endpoint_id
        and row.status == "sent"
    )


async def test_with_concurrency_n_a_worker_has_n_sends_in_flight_beyond_its_batch(
    hooks: HooksApp,
    receiver: Receiver,
    hook_worker: HookWorkerFactory,
    start: Callable[[OutboxWorker], None],
    db_engine: AsyncEngine,
) -> None:
    # The receiver answers nothing until six requests are open at once: a worker that waited
    # for its claims (two rows each) to be answered before claiming more would never get there.
    receiver.hold("/held")
    parties = await make_parties(hooks.client, max_handling_capacity=10)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url("/held"))
    for _ in range(6):
        await create_shipment(hooks.client, parties.seller_headers)
    start(
        hook_worker(
            outbox_webhook_concurrency=6, outbox_batch_size=2, webhook_endpoint_concurrency=6
        )
    )

    await eventually(lambda: receiver.in_flight["/held"] == 6, within=10)
    receiver.release("/held")

    async def all_sent() -> bool:
        return await sent_webhooks(db_engine, endpoint["id"]) == 6

    await eventually(all_sent, within=10)
    assert receiver.most_in_flight["/held"] == 6
    assert len(receiver.received_at("/held")) == 6


async def test_a_free_slot_takes_the_next_row_while_the_others_are_still_sending(
    hooks: HooksApp,
    receiver: Receiver,
    hook_worker: HookWorkerFactory,
    start: Callable[[OutboxWorker], None],
    db_engine: AsyncEngine,
) -> None:
    receiver.hold("/held")
    held_seller = await make_parties(hooks.client)
    await register_endpoint(hooks.client, held_seller.seller_headers, receiver.url("/held"))
    for _ in range(2):
        await create_shipment(hooks.client, held_seller.seller_headers)
    # Queued after the held ones: they are behind them in the queue and in the same batch.
    fast_seller = await make_parties(hooks.client)
    fast = await register_endpoint(hooks.client, fast_seller.seller_headers, receiver.url("/fast"))
    for _ in range(5):
        await create_shipment(hooks.client, fast_seller.seller_headers)
    start(hook_worker(outbox_webhook_concurrency=3, outbox_batch_size=3))

    async def fast_ones_sent() -> bool:
        return await sent_webhooks(db_engine, fast["id"]) == 5

    # One slot cycles through the five fast rows while two stay taken by the held ones.
    await eventually(fast_ones_sent, within=10)
    assert receiver.in_flight["/held"] == 2
    assert len(receiver.received_at("/fast")) == 5
    receiver.release("/held")


async def test_webhooks_waiting_on_a_slow_receiver_never_delay_emails(
    hooks: HooksApp,
    receiver: Receiver,
    smtp_server: SmtpServer,
    hook_worker: HookWorkerFactory,
    start: Callable[[OutboxWorker], None],
    db_engine: AsyncEngine,
) -> None:
    # The receiver answers only when the test says so (a receiver answering in 2 s, with the
    # 2 s made as long as the test needs): every email must be through before then.
    receiver.hold("/slow")
    parties = await make_parties(hooks.client, max_handling_capacity=10)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url("/slow"))
    # Each creation queues a webhook, then the recipient's email: they alternate in the queue.
    shipments = [await create_shipment(hooks.client, parties.seller_headers) for _ in range(6)]
    start(hook_worker(outbox_webhook_concurrency=2, outbox_email_concurrency=2))

    recipients = [shipment["recipient"]["email"] for shipment in shipments]
    await eventually(lambda: all(smtp_server.received_by(to) for to in recipients), within=10)
    # All six emails arrived while the webhooks were still waiting for their answers.
    assert receiver.in_flight["/slow"] == 2
    assert await sent_webhooks(db_engine, endpoint["id"]) == 0

    receiver.release("/slow")

    async def all_sent() -> bool:
        return await sent_webhooks(db_engine, endpoint["id"]) == 6

    await eventually(all_sent, within=10)
