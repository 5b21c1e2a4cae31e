"""An app with manual partner approval, the production default, beside the suite's `auto` one;
and, for the approval email, the real SMTP server and outbox workers of the notification tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from backend.config import Settings
from backend.main import create_app
from tests.outbox.conftest import (
    make_worker,  # noqa: F401 - a fixture, shared with the notification tests
    smtp_server,  # noqa: F401 - a fixture
    worker_settings,  # noqa: F401 - a fixture
)


@pytest.fixture(scope="session")
async def manual_approval_app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings.model_copy(update={"partner_approval": "manual"}))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def manual_client(manual_approval_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app where new partners start pending."""
    transport = httpx.ASGITransport(app=manual_approval_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
