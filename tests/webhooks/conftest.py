"""Fixtures for webhook tests: a receiver on loopback, an app whose webhooks may call it, and
workers that deliver to it (over the outbox fixtures' SMTP server and settings)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest

from backend.worker import OutboxWorker
from tests.outbox.conftest import (
    WorkerSettingsFactory,
    make_worker,  # noqa: F401 - a fixture, shared with the outbox tests
    smtp_server,  # noqa: F401 - a fixture
    worker_settings,  # noqa: F401 - a fixture
)
from tests.webhooks.receiver import HooksApp, Receiver, running_hooks_app, running_receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback (see receiver.py)."""
    async with running_receiver() as server:
        yield server


@pytest.fixture
async def hooks(database_url: str, redis_url: str) -> AsyncIterator[HooksApp]:
    """An app whose webhook URLs may point at the loopback receiver."""
    async with running_hooks_app(database_url, redis_url) as hooks_app:
        yield hooks_app


class HookWorkerFactory(Protocol):
    def __call__(self, **overrides: Any) -> OutboxWorker: ...


@pytest.fixture
async def hook_worker(
    hooks: HooksApp,
    worker_settings: WorkerSettingsFactory,  # noqa: F811 - the fixture imported above
) -> AsyncIterator[HookWorkerFactory]:
    """Workers over the hooks app's sessionmaker that may call the loopback receiver."""
    workers: list[OutboxWorker] = []

    def build(**overrides: Any) -> OutboxWorker:
        grace = overrides.pop("shutdown_grace_seconds", 0.5)
        settings = worker_settings(**{"webhooks_allow_private": True, **overrides})
        worker = OutboxWorker(settings, hooks.sessionmaker, shutdown_grace_seconds=grace)
        workers.append(worker)
        return worker

    yield build
    for worker in workers:
        await worker.aclose()
