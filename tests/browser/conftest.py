"""Fixtures for browser tests: a real server on loopback and Debian's headless Chromium.

The browser talks TCP, so the app runs under uvicorn on 127.0.0.1 (as a task on the session's
event loop, like the live-update tests). Playwright drives Debian's /usr/bin/chromium where it
exists (as in CI) and never downloads a browser itself. Every request a page makes to anything
but loopback is aborted and recorded, so a test can assert that the page needs no network
beyond this machine.

Screenshots are written only when SHIPTRACK_SCREENSHOTS names a folder, e.g.
`SHIPTRACK_SCREENSHOTS=docs/screenshots pytest tests/browser`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Route,
    ViewportSize,
    async_playwright,
    expect,
)

from backend.main import create_app
from tests.conftest import make_settings
from tests.servers import serving_built

DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
# Upper bound for anything that waits (a guard against hanging, never a measurement).
SAFETY_SECONDS = 10.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True)
class Screen:
    name: str
    width: int
    height: int
    # Honours <meta name="viewport"> and has touch, as a real phone does.
    mobile: bool

    @property
    def viewport(self) -> ViewportSize:
        return ViewportSize(width=self.width, height=self.height)


PHONE = Screen("phone", 390, 844, mobile=True)
DESKTOP = Screen("desktop", 1280, 900, mobile=False)


@dataclass(frozen=True, slots=True)
class LiveServer:
    """The app served on a free 127.0.0.1 port, and a plain HTTP client for it."""

    base_url: str
    http: httpx.AsyncClient


@pytest.fixture(scope="session")
async def live_server(database_url: str, redis_url: str) -> AsyncIterator[LiveServer]:
    """Shared by every browser test (each still starts from empty tables and Redis)."""

    # A stream notices that its page has gone only when its next heartbeat fails to send; a
    # short heartbeat lets the server stop at once at the end of the run instead of waiting.
    def build(base_url: str) -> FastAPI:
        # Served where its reference says it is: Scalar sends "Authorize" to that server.
        settings = make_settings(
            database_url, redis_url, sse_heartbeat_seconds=0.5, public_base_url=base_url
        )
        return create_app(settings)

    async with (
        serving_built(build, graceful_seconds=2) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=SAFETY_SECONDS) as http,
    ):
        yield LiveServer(base_url, http)


@pytest.fixture(scope="session")
def chromium_path() -> Path | None:
    """$CHROMIUM, else Debian's Chromium (CI installs it), else None: the build Playwright
    installed for `make test` on a machine without one (see the Makefile's `browser`)."""
    chosen = os.environ.get("CHROMIUM")
    if chosen:
        return Path(chosen)
    return DEBIAN_CHROMIUM if DEBIAN_CHROMIUM.is_file() else None


@pytest.fixture(scope="session")
async def browser(chromium_path: Path | None) -> AsyncIterator[Browser]:
    """One headless Chromium for the whole run (a context per test keeps tests apart)."""
    # Assertions retry until the page shows what they expect, up to the same safety bound.
    expect.set_options(timeout=SAFETY_SECONDS * 1000)
    async with async_playwright() as playwright:
        installed = Path(playwright.chromium.executable_path).is_file()  # noqa: ASYNC240
        if chromium_path is None and not installed:
            # A broken setup, never a skip.
            pytest.fail(
                f"No Chromium: install Debian's ({DEBIAN_CHROMIUM}), set CHROMIUM, or run "
                "`make test`, which has Playwright install its own where neither exists.",
                pytrace=False,
            )
        chromium = await playwright.chromium.launch(executable_path=chromium_path, headless=True)
        yield chromium
        await chromium.close()


@dataclass(slots=True)
class OfflinePage:
    """A page that may reach only loopback, with what it tried beyond and what broke."""

    page: Page
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class OpenPage(Protocol):
    """Opens a page on `screen` in a fresh context: in UTC with JavaScript on, unless told."""

    def __call__(
        self, screen: Screen, *, timezone_id: str = "UTC", java_script_enabled: bool = True
    ) -> Awaitable[OfflinePage]: ...


@pytest.fixture
async def open_page(browser: Browser, live_server: LiveServer) -> AsyncIterator[OpenPage]:
    """Opens pages on the live server; each in a fresh context, closed after the test."""
    async with AsyncExitStack() as contexts:

        async def open_with(
            screen: Screen, *, timezone_id: str = "UTC", java_script_enabled: bool = True
        ) -> OfflinePage:
            context = await browser.new_context(
                base_url=live_server.base_url,
                viewport=screen.viewport,
                is_mobile=screen.mobile,
                has_touch=screen.mobile,
                locale="en-US",
                timezone_id=timezone_id,
                java_script_enabled=java_script_enabled,
            )
            contexts.push_async_callback(context.close)
            context.set_default_timeout(SAFETY_SECONDS * 1000)
            return await _offline_page(context)

        yield open_with


async def _offline_page(context: BrowserContext) -> OfflinePage:
    blocked: list[str] = []

    async def loopback_only(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK_HOSTS:
            await route.continue_()
        else:
            blocked.append(url)
            await route.abort("internetdisconnected")

    # Routed before the page exists, so that not even its first request slips past.
    await context.route("**/*", loopback_only)
    offline = OfflinePage(await context.new_page(), blocked)
    offline.page.on("pageerror", lambda error: offline.errors.append(str(error)))
    # Whatever the page's Content-Security-Policy refused breaks the page just as well.
    offline.page.on("console", lambda message: _note_policy_violation(offline, message))
    return offline


def _note_policy_violation(offline: OfflinePage, message: ConsoleMessage) -> None:
    if message.type == "error" and "Content Security Policy" in message.text:
        offline.errors.append(message.text)


class SaveScreenshot(Protocol):
    async def __call__(self, page: Page, name: str, *, full_page: bool = True) -> None: ...


@pytest.fixture
def save_screenshot() -> SaveScreenshot:
    """Writes `<name>.png` into $SHIPTRACK_SCREENSHOTS when it is set; does nothing otherwise."""
    folder = os.environ.get("SHIPTRACK_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)

    async def save(page: Page, name: str, *, full_page: bool = True) -> None:
        if folder:
            await page.screenshot(path=Path(folder) / f"{name}.png", full_page=full_page)

    return save
