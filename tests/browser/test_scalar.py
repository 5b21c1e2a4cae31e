"""The Scalar API reference at /scalar, in headless Chromium with only loopback reachable.

An integrator must be able to read the reference and log in with either kind of account from
the page, on a machine without internet access (the Scalar bundle is served by the service).
"""

from __future__ import annotations

import pytest
from playwright.async_api import Locator, Page, expect

from tests.browser.conftest import DESKTOP, LiveServer, OfflinePage, OpenPage, SaveScreenshot
from tests.factories import bearer, sign_up

pytestmark = pytest.mark.browser


def authentication(page: Page) -> Locator:
    return page.get_by_role("region", name="Authentication")


def auth_field(page: Page, label: str) -> Locator:
    """The input on the row labelled `label` (Scalar's text fields carry no accessible name)."""
    row = authentication(page).locator("tr", has=page.get_by_text(label, exact=True))
    return row.get_by_role("combobox")


async def open_reference(open_page: OpenPage) -> OfflinePage:
    opened = await open_page(DESKTOP)
    response = await opened.page.goto("/scalar")
    assert response is not None
    assert response.status == 200
    # The bundle is a blocking script: by now it was fetched, from loopback or not at all.
    assert_needed_only_loopback(opened)
    await expect(opened.page.get_by_role("heading", name="Shiptrack API", level=1)).to_be_visible()
    return opened


async def choose_auth_type(page: Page, scheme: str) -> None:
    await authentication(page).get_by_role("button", name="Select Auth Type").click()
    await page.get_by_role("option", name=scheme).click()
    # The picker stays open for picking several; close it to reach the fields underneath.
    await page.keyboard.press("Escape")


def assert_needed_only_loopback(opened: OfflinePage) -> None:
    # Any request beyond loopback (the CDN bundle, fonts, a favicon, telemetry) fails the test.
    assert not opened.blocked, (
        f"/scalar needed the network for {sorted(opened.blocked)} "
        "(is the local bundle installed? `make assets` puts it in backend/static/scalar/)"
    )
    assert opened.errors == []


async def test_renders_offline_with_both_auth_schemes(
    open_page: OpenPage, save_screenshot: SaveScreenshot
) -> None:
    opened = await open_reference(open_page)
    page = opened.page

    await expect(page.get_by_role("link", name="Shipments", exact=True)).to_be_visible()
    await authentication(page).get_by_role("button", name="Select Auth Type").click()
    await expect(page.get_by_role("listbox")).to_match_aria_snapshot(
        """
        - listbox:
          - option "sellerAuth"
          - option "partnerAuth"
          - option "apiKey"
        """
    )
    await expect(page.get_by_role("listbox")).to_be_visible()
    assert_needed_only_loopback(opened)
    await save_screenshot(page, "scalar", full_page=False)


@pytest.mark.parametrize("kind", ["seller", "partner"])
async def test_authorize_logs_in_with_the_password_flow(
    open_page: OpenPage, live_server: LiveServer, kind: str
) -> None:
    account = await sign_up(live_server.http, kind)
    opened = await open_reference(open_page)
    page = opened.page

    await choose_auth_type(page, f"{kind}Auth")
    await expect(auth_field(page, "Token URL")).to_have_text(f"/{kind}/token")
    # Only what this password flow takes: no client id or secret, nowhere to send them, no scopes.
    for unused in ("Client ID", "Client Secret", "Credentials Location", "No Scopes Defined"):
        await expect(authentication(page).get_by_text(unused)).to_be_hidden()
    await auth_field(page, "Username").fill(account["email"])
    await authentication(page).get_by_role("textbox", name="Password").fill(account["password"])
    await authentication(page).get_by_role("button", name="Authorize").click()

    access_token = authentication(page).get_by_role("textbox", name="Access Token")
    await expect(access_token).not_to_have_value("")
    # The token the page obtained is a real one for this account.
    me = await live_server.http.get(f"/{kind}/me", headers=bearer(await access_token.input_value()))
    assert me.status_code == 200, me.text
    assert me.json()["email"] == account["email"]
    assert_needed_only_loopback(opened)


async def test_an_api_key_is_a_bearer_token_in_the_auth_box(
    open_page: OpenPage, live_server: LiveServer
) -> None:
    opened = await open_reference(open_page)
    page = opened.page

    await choose_auth_type(page, "apiKey")
    box = authentication(page)
    await expect(box.get_by_text("Bearer Token")).to_be_visible()
    await expect(box.get_by_text("st_test_")).to_be_visible()  # the scheme's description
    for absent in ("Username", "Client ID", "Token URL"):
        await expect(box.get_by_text(absent, exact=True)).to_be_hidden()
    assert_needed_only_loopback(opened)
