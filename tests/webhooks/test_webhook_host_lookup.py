"""Registering a webhook looks its host up before the request takes a database connection, and
within a deadline: a slow DNS server costs the sellers registering, never anyone else. Each
delivery looks the host up again and connects to the address that passed the check.

Registration tests replace the app's resolver by one that stalls until the test lets it answer
(the route's `host_resolver` dependency): a stall is the point, and a resolver that waits on an
event makes it exact. It answers with a literal public address, which registration only checks
and never connects to. Delivery tests ask a real DNS server on loopback (tests/webhooks/
dns_server.py) through WEBHOOK_DNS_SERVER.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.context import app_context
from backend.main import create_app
from backend.webhooks.router import host_resolver
from backend.webhooks.webhooks import Resolver
from backend.worker import OutboxWorker
from tests.assertions import assert_problem
from tests.conftest import count_rows, make_settings, running_client
from tests.factories import account_with_token
from tests.outbox.conftest import WorkerSettingsFactory, outbox_rows
from tests.webhooks.dns_server import DnsServer, running_dns_server
from tests.webhooks.receiver import Receiver, register_endpoint

PUBLIC_ADDRESS = "93.184.215.14"
REGISTRATIONS = 8


@dataclass
class StalledResolver:
    """Answers lookups with PUBLIC_ADDRESS, but only once `answer()` is called."""

    waiting: int = 0
    _answer: asyncio.Event = field(default_factory=asyncio.Event)
    _arrivals: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def __call__(self, host: str, port: int) -> list[str]:
        async with self._arrivals:
            self.waiting += 1
            self._arrivals.notify_all()
        await self._answer.wait()
        return [PUBLIC_ADDRESS]

    def answer(self) -> None:
        self._answer.set()

    async def wait_for_waiting(self, count: int) -> None:
        async with asyncio.timeout(10), self._arrivals:  # a guard against hanging
            await self._arrivals.wait_for(lambda: self.waiting >= count)


def look_up_with(app: FastAPI, resolver: Resolver) -> None:
    """Make the app's webhook routes look hosts up with `resolver`."""

    async def resolver_dependency() -> Resolver:
        return resolver

    app.dependency_overrides[host_resolver] = resolver_dependency


@dataclass(frozen=True, slots=True)
class SmallPoolApp:
    client: httpx.AsyncClient
    resolver: StalledResolver


@asynccontextmanager
async def small_pool_app(
    database_url: str, redis_url: str, **overrides: object
) -> AsyncIterator[SmallPoolApp]:
    """The production URL guard, two pooled connections, and the stalling resolver."""
    settings = make_settings(
        database_url, redis_url, db_pool_size=2, db_pool_timeout_seconds=2, **overrides
    )
    application = create_app(settings)
    resolver = StalledResolver()
    look_up_with(application, resolver)
    async with running_client(application) as client:
        yield SmallPoolApp(client, resolver)


@pytest.fixture
async def slow_dns(database_url: str, redis_url: str) -> AsyncIterator[SmallPoolApp]:
    async with small_pool_app(database_url, redis_url, webhook_dns_timeout_seconds=30) as app:
        yield app


@pytest.fixture
async def dead_dns(database_url: str, redis_url: str) -> AsyncIterator[SmallPoolApp]:
    async with small_pool_app(database_url, redis_url, webhook_dns_timeout_seconds=0.2) as app:
        yield app


async def test_slow_lookups_leave_other_sellers_requests_answered(
    slow_dns: SmallPoolApp, db_engine: AsyncEngine
) -> None:
    client = slow_dns.client
    _, registering = await account_with_token(client, "seller")
    _, other = await account_with_token(client, "seller")
    registrations = [
        asyncio.create_task(
            client.post(
                "/seller/webhooks",
                json={"url": f"https://hooks.shop.example/{number}"},
                headers=registering,
            )
        )
        for number in range(REGISTRATIONS)
    ]
    # Every registration is waiting on DNS: four times as many as the pool has connections.
    await slow_dns.resolver.wait_for_waiting(REGISTRATIONS)

    listed = await client.get("/seller/webhooks", headers=other)
    shipments = await client.get("/shipments", headers=other)

    assert listed.status_code == 200, listed.text
    assert listed.json()["items"] == []
    assert shipments.status_code == 200, shipments.text
    assert not any(registration.done() for registration in registrations)
    slow_dns.resolver.answer()
    async with asyncio.timeout(10):
        responses = await asyncio.gather(*registrations)
    assert [response.status_code for response in responses] == [201] * REGISTRATIONS
    assert await count_rows(db_engine, "webhook_endpoints") == REGISTRATIONS


async def test_a_host_that_does_not_resolve_in_time_is_refused(
    dead_dns: SmallPoolApp, db_engine: AsyncEngine
) -> None:
    _, headers = await account_with_token(dead_dns.client, "seller")

    response = await dead_dns.client.post(
        "/seller/webhooks", json={"url": "https://hooks.shop.example/"}, headers=headers
    )

    problem = assert_problem(response, 422, "unsafe_webhook_url")
    assert "does not resolve in time" in problem["detail"]
    assert await count_rows(db_engine, "webhook_endpoints") == 0


async def test_no_lookup_happens_for_a_caller_who_is_not_a_seller(
    slow_dns: SmallPoolApp, db_engine: AsyncEngine
) -> None:
    _, partner = await account_with_token(slow_dns.client, "partner")
    body = {"url": "https://hooks.shop.example/"}

    anonymous = await slow_dns.client.post("/seller/webhooks", json=body)
    wrong_kind = await slow_dns.client.post("/seller/webhooks", json=body, headers=partner)

    assert anonymous.status_code == 401
    assert_problem(wrong_kind, 403, "wrong_account_kind")
    assert slow_dns.resolver.waiting == 0
    assert await count_rows(db_engine, "webhook_endpoints") == 0


# --- at delivery ---------------------------------------------------------------------------------
# Deliveries are looked up through a DNS server the test runs on loopback (WEBHOOK_DNS_SERVER),
# the way production looks them up, over UDP: no resolver is swapped in.


async def send_test_event_through(
    dns_server: DnsServer,
    database_url: str,
    redis_url: str,
    receiver: Receiver,
    worker_settings: WorkerSettingsFactory,
    **overrides: object,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Register http://hooks.shop.example:<receiver port>/hooks with an app that asks
    `dns_server`, queue a test event to it and let a worker asking the same server deliver it.
    Returns (the test event, the endpoint's delivery log)."""
    settings = make_settings(
        database_url, redis_url, webhook_dns_server=dns_server.address, **overrides
    )
    application = create_app(settings)
    async with running_client(application) as client:
        _, headers = await account_with_token(client, "seller")
        url = f"http://hooks.shop.example:{receiver.port}/hooks"
        endpoint = await register_endpoint(client, headers, url)
        sent = await client.post(f"/seller/webhooks/{endpoint['id']}/test", headers=headers)
        assert sent.status_code == 202, sent.text
        worker = OutboxWorker(
            worker_settings(webhook_dns_server=dns_server.address, **overrides),
            app_context(application).sessionmaker,
        )
        try:
            await worker.run_once()
        finally:
            await worker.aclose()
        log = await client.get(f"/seller/webhooks/{endpoint['id']}/deliveries", headers=headers)
    assert log.status_code == 200, log.text
    items: list[dict[str, Any]] = log.json()["items"]
    return sent.json(), items


async def test_a_delivery_connects_to_the_address_that_passed_the_check(
    database_url: str, redis_url: str, receiver: Receiver, worker_settings: WorkerSettingsFactory
) -> None:
    """The worker looks the name up once and connects there: the name is known only to the
    test's DNS server, so no other lookup could have found the receiver. The receiver still
    sees its own name."""
    async with running_dns_server("127.0.0.1") as dns_server:
        event, [attempt] = await send_test_event_through(
            dns_server,
            database_url,
            redis_url,
            receiver,
            worker_settings,
            webhooks_allow_private=True,
        )

    [request] = receiver.requests
    assert request.headers["host"] == f"hooks.shop.example:{receiver.port}"
    assert request.headers["webhook-id"] == event["event_id"]
    assert attempt["succeeded"] is True
    # Once at registration, once for the delivery.
    assert dns_server.a_queries() == ["hooks.shop.example"] * 2


async def test_a_name_that_turns_private_after_registration_is_not_called(
    database_url: str,
    redis_url: str,
    receiver: Receiver,
    worker_settings: WorkerSettingsFactory,
    db_engine: AsyncEngine,
) -> None:
    """DNS rebinding: the server answers a public address at registration (only checked, never
    connected to), then loopback, where the receiver listens, at delivery."""
    async with running_dns_server(PUBLIC_ADDRESS, "127.0.0.1") as dns_server:
        _, [attempt] = await send_test_event_through(
            dns_server, database_url, redis_url, receiver, worker_settings
        )

    assert dns_server.a_queries() == ["hooks.shop.example"] * 2
    assert receiver.requests == []
    assert attempt["succeeded"] is False
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("Destination not allowed")
    assert "127.0.0.1" not in attempt["error"]
    [row] = [row for row in await outbox_rows(db_engine) if row.kind == "webhook"]
    assert (row.status, row.attempts) == ("pending", 1)
