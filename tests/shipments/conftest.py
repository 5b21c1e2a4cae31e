"""The outbox's and webhooks' fixtures, for the tests of the emails and events shipments cause;
and an app of its own whose public base URL is the one those emails link to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.context import app_context
from backend.main import create_app
from tests.conftest import make_settings, running_client
from tests.outbox.conftest import (
    PUBLIC_BASE_URL,
    make_worker,  # noqa: F401 - a fixture, shared with the outbox tests
    smtp_server,  # noqa: F401 - a fixture
    worker_settings,  # noqa: F401 - a fixture
)
from tests.webhooks.conftest import hooks  # noqa: F401 - a fixture, shared with the webhook tests


@dataclass(frozen=True, slots=True)
class TrackApp:
    """An app of its own whose public base URL is PUBLIC_BASE_URL, with a running client."""

    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return app_context(self.app).sessionmaker


@pytest.fixture
async def track_app(database_url: str, redis_url: str) -> AsyncIterator[TrackApp]:
    settings = make_settings(database_url, redis_url, public_base_url=PUBLIC_BASE_URL)
    application = create_app(settings)
    async with running_client(application) as http:
        yield TrackApp(application, http, settings)
