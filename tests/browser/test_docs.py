"""Swagger UI at /docs, in headless Chromium with only loopback reachable: its assets come from
this service, and its Content-Security-Policy lets it run."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from tests.browser.conftest import DESKTOP, OpenPage

pytestmark = pytest.mark.browser


async def test_swagger_ui_renders_offline_under_its_policy(open_page: OpenPage) -> None:
    opened = await open_page(DESKTOP)
    page = opened.page

    response = await page.goto("/docs")

    assert response is not None
    assert response.status == 200
    await expect(page.get_by_role("heading", name=re.compile(r"^Shiptrack API"))).to_be_visible()
    await expect(page.get_by_text("/seller/signup", exact=True).first).to_be_visible()
    assert not opened.blocked, (
        f"/docs needed the network for {sorted(opened.blocked)} "
        "(are the assets installed? `make assets` puts them in backend/static/swagger-ui/)"
    )
    assert opened.errors == []
