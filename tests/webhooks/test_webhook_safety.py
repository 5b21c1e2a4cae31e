"""What webhooks give away and what they cost us: the delivery log cannot scan ports, logs show a
receiver's origin only, test sends are rate-limited, and an endpoint deleted mid-delivery ends
the attempt quietly."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.assertions import assert_problem
from tests.conftest import count_rows
from tests.factories import account_with_token
from tests.outbox.conftest import outbox_rows
from tests.shipments.factories import create_shipment, make_parties
from tests.webhooks.conftest import HookWorkerFactory
from tests.webhooks.receiver import (
    HooksApp,
    Receiver,
    register_endpoint,
    running_hooks_app,
)

CONNECTION_FAILED = "Connection failed."


async def deliveries(
    client: httpx.AsyncClient, headers: dict[str, str], endpoint_id: str
) -> list[dict[str, Any]]:
    response = await client.get(f"/seller/webhooks/{endpoint_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# --- the delivery log does not tell refused from filtered ports -------------------------------


@pytest.fixture
def refused_port() -> int:
    """A loopback port nobody listens on (any more): connections are refused at once."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return int(closed.getsockname()[1])


@pytest.fixture
def filtered_port() -> Iterator[int]:
    """A loopback port that drops connection attempts, as a firewall would: a listener whose
    accept queue (of one) is full and never accepted from, so new SYNs go unanswered."""
    with socket.socket() as listener, socket.socket() as queued:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        queued.connect(("127.0.0.1", port))
        yield port


@pytest.mark.parametrize("port_fixture", ["refused_port", "filtered_port"])
async def test_an_unreachable_port_is_logged_as_connection_failed_whatever_the_reason(
    hooks: HooksApp,
    hook_worker: HookWorkerFactory,
    db_engine: AsyncEngine,
    request: pytest.FixtureRequest,
    port_fixture: str,
) -> None:
    port: int = request.getfixturevalue(port_fixture)
    parties = await make_parties(hooks.client)
    url = f"http://127.0.0.1:{port}/hooks"
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, url)
    await create_shipment(hooks.client, parties.seller_headers)

    # A one-second deadline, so the dropped connection gives up soon.
    await hook_worker(webhook_timeout_seconds=1).run_once()

    [attempt] = await deliveries(hooks.client, parties.seller_headers, endpoint["id"])
    assert (attempt["succeeded"], attempt["status_code"]) == (False, None)
    assert attempt["error"] == CONNECTION_FAILED
    [row] = [row for row in await outbox_rows(db_engine) if row.kind == "webhook"]
    assert row.status == "pending"  # to be retried
    assert row.last_error == f"WebhookDeliveryFailed: {CONNECTION_FAILED}"


# --- logs show the receiver's origin, never its path or query -----------------------------------


async def test_logs_show_the_receivers_origin_and_never_its_keys(
    hooks: HooksApp,
    receiver: Receiver,
    hook_worker: HookWorkerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    parties = await make_parties(hooks.client)
    url = receiver.url("/hooks/acct-SECRETPATH?api_key=SECRETKEY")
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, url)
    receiver.answer(500)
    await create_shipment(hooks.client, parties.seller_headers)

    await hook_worker().run_once()

    [request] = receiver.requests
    assert request.path == "/hooks/acct-SECRETPATH?api_key=SECRETKEY"  # sent as registered
    [attempt] = await deliveries(hooks.client, parties.seller_headers, endpoint["id"])
    assert attempt["status_code"] == 500
    messages = [record.getMessage() for record in caplog.records]
    assert not [message for message in messages if "SECRET" in message]
    [logged] = [r for r in caplog.records if r.name == "backend.webhooks.webhooks"]
    assert logged.levelno == logging.INFO
    assert f"to http://127.0.0.1:{receiver.port}: HTTP 500" in logged.getMessage()


# --- test sends are rate-limited per endpoint -------------------------------------------------


async def test_test_sends_are_limited_per_endpoint(
    database_url: str, redis_url: str, receiver: Receiver, db_engine: AsyncEngine
) -> None:
    async with running_hooks_app(database_url, redis_url, webhook_test_sends_per_minute=2) as hooks:
        _, headers = await account_with_token(hooks.client, "seller")
        busy = await register_endpoint(hooks.client, headers, receiver.url("/busy"))
        other = await register_endpoint(hooks.client, headers, receiver.url("/other"))

        def send(endpoint: dict[str, Any]) -> Any:
            return hooks.client.post(f"/seller/webhooks/{endpoint['id']}/test", headers=headers)

        allowed = [await send(busy), await send(busy)]
        refused = await send(busy)
        elsewhere = await send(other)

    assert [response.status_code for response in allowed] == [202, 202]
    assert_problem(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert elsewhere.status_code == 202, elsewhere.text
    # Only the accepted sends queued an event and a delivery.
    assert await count_rows(db_engine, "events") == 3
    assert len([row for row in await outbox_rows(db_engine) if row.kind == "webhook"]) == 3


async def test_another_sellers_endpoint_is_not_found_before_any_limit(
    database_url: str, redis_url: str, receiver: Receiver
) -> None:
    async with running_hooks_app(database_url, redis_url, webhook_test_sends_per_minute=1) as hooks:
        _, owner = await account_with_token(hooks.client, "seller")
        _, stranger = await account_with_token(hooks.client, "seller")
        endpoint = await register_endpoint(hooks.client, owner, receiver.url())
        path = f"/seller/webhooks/{endpoint['id']}/test"

        probes = [await hooks.client.post(path, headers=stranger) for _ in range(3)]
        owned = await hooks.client.post(path, headers=owner)

    for probe in probes:
        assert_problem(probe, 404, "webhook_endpoint_not_found")
    assert owned.status_code == 202, owned.text  # the stranger spent none of its budget


# --- an endpoint deleted while its delivery is in flight ----------------------------------------


async def test_deleting_an_endpoint_mid_delivery_settles_the_delivery_quietly(
    hooks: HooksApp,
    receiver: Receiver,
    hook_worker: HookWorkerFactory,
    db_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    parties = await make_parties(hooks.client)
    endpoint = await register_endpoint(hooks.client, parties.seller_headers, receiver.url("/held"))
    receiver.hold("/held")
    await create_shipment(hooks.client, parties.seller_headers)
    worker = hook_worker()

    sending = asyncio.create_task(worker.run_once())
    await receiver.wait_for_request("/held")
    deleted = await hooks.client.delete(
        f"/seller/webhooks/{endpoint['id']}", headers=parties.seller_headers
    )
    receiver.release("/held")
    async with asyncio.timeout(10):  # a guard against hanging
        await sending

    assert deleted.status_code == 204
    [row] = [row for row in await outbox_rows(db_engine) if row.kind == "webhook"]
    assert (row.status, row.attempts, row.last_error) == ("sent", 1, None)
    assert await count_rows(db_engine, "webhook_deliveries") == 0
    assert await worker.run_once() == 0  # nothing left to retry
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
