"""The recipient's tracking page in headless Chromium, on a phone and on a desktop.

What is checked is what a recipient sees: the status heading, the progress steps (as a screen
reader reads them), the history, and the page changing by itself when the partner reports.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Locator, Page, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.browser.conftest import (
    DESKTOP,
    PHONE,
    LiveServer,
    OfflinePage,
    OpenPage,
    SaveScreenshot,
    Screen,
)
from tests.shipments.factories import (
    Parties,
    bring_to,
    create_shipment,
    delivery_code,
    make_parties,
    patch_shipment,
)
from tests.shipments.test_reviews import delivered_emails, reviews_stored

pytestmark = pytest.mark.browser

SCREENS = pytest.mark.parametrize("screen", [PHONE, DESKTOP], ids=lambda screen: screen.name)


def status_heading(page: Page) -> Locator:
    return page.get_by_role("heading", level=1)


def progress(page: Page) -> Locator:
    return page.get_by_role("list", name="Delivery progress")


def history(page: Page) -> Locator:
    """The history entries, newest first."""
    return page.get_by_role("region", name="History").get_by_role("listitem")


async def report(
    live_server: LiveServer, parties: Parties, shipment: dict[str, Any], **body: Any
) -> None:
    response = await patch_shipment(
        live_server.http, parties.partner_headers, shipment["id"], **body
    )
    assert response.status_code == 200, response.text


async def open_tracking_page(open_page: OpenPage, screen: Screen, number: str) -> OfflinePage:
    opened = await open_page(screen)
    response = await opened.page.goto(f"/t/{number}")
    assert response is not None
    assert response.status == 200
    return opened


async def assert_fits_the_screen(page: Page, screen: Screen) -> None:
    """Nothing sticks out sideways: a phone user never has to scroll horizontally."""
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= screen.width, f"page is {width}px wide on a {screen.width}px wide screen"


@SCREENS
async def test_shows_status_progress_and_history(
    open_page: OpenPage, live_server: LiveServer, db_engine: AsyncEngine, screen: Screen
) -> None:
    parties = await make_parties(live_server.http)
    created = await create_shipment(live_server.http, parties.seller_headers)
    shipment = await bring_to(live_server.http, db_engine, parties, created["id"], "in_transit")
    await report(live_server, parties, shipment, location_zip="02110", note="Left the Boston hub")

    opened = await open_tracking_page(open_page, screen, shipment["tracking_number"])
    page = opened.page

    await expect(status_heading(page)).to_have_text("In transit")
    await expect(page.get_by_text(shipment["tracking_number"]).first).to_be_visible()
    await expect(progress(page)).to_be_visible()
    await expect(progress(page)).to_match_aria_snapshot(
        """
        - list "Delivery progress":
          - listitem: "Step 1 of 4, done: Order placed"
          - listitem: "Step 2 of 4, current: In transit"
          - listitem: "Step 3 of 4, not yet: Out for delivery"
          - listitem: "Step 4 of 4, not yet: Delivered"
        """
    )
    await expect(history(page)).to_have_count(3)
    await expect(history(page).nth(0)).to_contain_text("Left the Boston hub")
    await expect(history(page).nth(0)).to_contain_text("ZIP 02110")
    await expect(history(page).nth(1)).to_contain_text("In transit")
    await expect(history(page).nth(2)).to_contain_text("Shipment created")
    await expect(history(page).nth(2)).to_be_visible()
    await assert_fits_the_screen(page, screen)
    assert opened.blocked == [], "the page reached beyond loopback"
    assert opened.errors == []


@SCREENS
async def test_updates_itself_when_the_partner_reports(
    open_page: OpenPage,
    live_server: LiveServer,
    screen: Screen,
    save_screenshot: SaveScreenshot,
) -> None:
    parties = await make_parties(live_server.http)
    shipment = await create_shipment(live_server.http, parties.seller_headers)
    opened = await open_tracking_page(open_page, screen, shipment["tracking_number"])
    page = opened.page
    await expect(status_heading(page)).to_have_text("Order placed")
    await expect(history(page)).to_have_count(1)
    # Survives only if the page is never reloaded: the update must happen in place.
    await page.evaluate("window.sameDocument = true")

    await report(live_server, parties, shipment, status="in_transit", note="Left the Boston hub")

    await expect(status_heading(page)).to_have_text("In transit")
    await expect(progress(page).locator('[aria-current="step"]')).to_contain_text("In transit")
    await expect(history(page)).to_have_count(2)
    await expect(history(page).first).to_contain_text("Left the Boston hub")

    # Still listening after the first swap: a scan without a status change shows up too.
    await report(
        live_server, parties, shipment, location_zip="02139", note="At the Cambridge depot"
    )

    await expect(history(page)).to_have_count(3)
    await expect(history(page).first).to_contain_text("At the Cambridge depot")
    await expect(page).to_have_title(f"In transit · {shipment['tracking_number']} · Shiptrack")
    assert await page.evaluate("window.sameDocument") is True, "the page reloaded"
    await assert_fits_the_screen(page, screen)
    assert opened.blocked == [], "the page reached beyond loopback"
    assert opened.errors == []
    await save_screenshot(page, f"tracking-{screen.name}")


# --- times in the reader's time zone -----------------------------------------------------------


def zone_name(local: datetime) -> str:
    """How Chromium names a zone in en-US: US zones by abbreviation ('EDT'), others by their
    offset ('GMT+9')."""
    name = local.tzname() or ""
    if name in ("EST", "EDT"):
        return name
    offset = local.utcoffset()
    assert offset is not None
    return f"GMT{int(offset.total_seconds() // 3600):+d}"


def as_shown_in(moment: datetime, zone: str) -> str:
    """A timeline moment as an en-US reader in `zone` should see it: 'Mon, Mar 9, 2026, 10:30
    PM EDT'."""
    local = moment.astimezone(ZoneInfo(zone))
    hour = local.hour % 12 or 12
    clock = f"{hour}:{local:%M} {local:%p}"
    return f"{local:%a}, {local:%b} {local.day}, {local.year}, {clock} {zone_name(local)}"


async def shown_moment(entry: Locator) -> tuple[datetime, str]:
    """The moment a history entry's <time> stands for, and the text the reader sees."""
    time = entry.locator("time")
    iso = await time.get_attribute("datetime")
    assert iso is not None
    return datetime.fromisoformat(iso), await time.inner_text()


def footer(page: Page) -> Locator:
    return page.get_by_role("contentinfo")


async def test_times_are_shown_in_the_readers_time_zone(
    open_page: OpenPage, live_server: LiveServer, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(live_server.http)
    created = await create_shipment(live_server.http, parties.seller_headers)
    shipment = await bring_to(live_server.http, db_engine, parties, created["id"], "in_transit")
    number = shipment["tracking_number"]

    shown: dict[str, str] = {}
    pages: dict[str, OfflinePage] = {}
    for zone in ("America/New_York", "Asia/Tokyo"):
        pages[zone] = opened = await open_page(DESKTOP, timezone_id=zone)
        response = await opened.page.goto(f"/t/{number}")
        assert response is not None
        assert response.status == 200
        page = opened.page
        await expect(footer(page)).to_contain_text(
            f"Times are in your time zone ({zone.replace('_', ' ')})."
        )
        await expect(footer(page)).not_to_contain_text("UTC")
        moment, text = await shown_moment(history(page).first)
        assert text == as_shown_in(moment, zone)
        # The ETA's day, in the same zone (with its year when that is not this one).
        eta = datetime.fromisoformat(shipment["estimated_delivery"]).astimezone(ZoneInfo(zone))
        eta_day = f"{eta:%A}, {eta:%B} {eta.day}"
        if eta.year != datetime.now(ZoneInfo(zone)).year:
            eta_day += f", {eta.year}"
        await expect(page.locator(".eta time")).to_have_text(eta_day)
        assert opened.errors == []
        shown[zone] = text
    # Tokyo is 13 or 14 hours ahead of New York: the same moment reads differently.
    assert shown["America/New_York"] != shown["Asia/Tokyo"]

    # An entry that arrives live is written in the reader's zone too.
    opened = pages["Asia/Tokyo"]
    page = opened.page
    await report(live_server, parties, shipment, location_zip="02139", note="At the depot")
    await expect(history(page)).to_have_count(3)
    await expect(history(page).first).to_contain_text("At the depot")
    moment, text = await shown_moment(history(page).first)
    assert text == as_shown_in(moment, "Asia/Tokyo")
    assert opened.errors == []


async def test_without_javascript_the_page_says_its_times_are_utc(
    open_page: OpenPage, live_server: LiveServer
) -> None:
    parties = await make_parties(live_server.http)
    shipment = await create_shipment(live_server.http, parties.seller_headers)
    opened = await open_page(PHONE, timezone_id="Asia/Tokyo", java_script_enabled=False)
    response = await opened.page.goto(f"/t/{shipment['tracking_number']}")
    assert response is not None
    assert response.status == 200
    page = opened.page

    await expect(footer(page)).to_contain_text("Times are in UTC.")
    moment, text = await shown_moment(history(page).first)
    assert text.endswith(f"{moment:%H:%M} UTC")
    await expect(footer(page)).to_contain_text("This page updates itself")
    await assert_fits_the_screen(page, PHONE)


# --- final shipments: no promise of updates, no stream -----------------------------------------

# Wraps EventSource before the page's script runs: which streams it opened, and which it closed.
WATCH_STREAMS = """
window.streams = [];
const PageEventSource = window.EventSource;
window.EventSource = class extends PageEventSource {
  constructor(url, options) {
    super(url, options);
    const record = { url: this.url, opened: false, closed: false };
    window.streams.push(record);
    this.addEventListener("open", () => { record.opened = true; });
    const close = this.close.bind(this);
    this.close = () => { record.closed = true; close(); };
  }
};
"""


async def open_watched(open_page: OpenPage, number: str) -> tuple[OfflinePage, list[str]]:
    """The tracking page with its streams watched, and every URL it requested."""
    opened = await open_page(PHONE)
    requested: list[str] = []
    opened.page.on("request", lambda request: requested.append(urlsplit(request.url).path))
    await opened.page.add_init_script(WATCH_STREAMS)
    response = await opened.page.goto(f"/t/{number}")
    assert response is not None
    assert response.status == 200
    return opened, requested


@pytest.mark.parametrize("status", ["delivered", "cancelled", "returned"])
async def test_a_final_shipments_page_promises_no_updates_and_opens_no_stream(
    open_page: OpenPage, live_server: LiveServer, db_engine: AsyncEngine, status: str
) -> None:
    parties = await make_parties(live_server.http)
    created = await create_shipment(live_server.http, parties.seller_headers)
    shipment = await bring_to(live_server.http, db_engine, parties, created["id"], status)

    opened, requested = await open_watched(open_page, shipment["tracking_number"])
    page = opened.page

    # The script has run (it rewrote the time note)...
    await expect(footer(page)).to_contain_text("Times are in your time zone (UTC).")
    await page.wait_for_load_state("networkidle")
    # ...and opened nothing.
    assert await page.evaluate("window.streams") == []
    assert not [path for path in requested if path.endswith("/stream")]
    await expect(page.get_by_text("updates itself")).to_have_count(0)
    assert opened.errors == []


async def test_the_page_stops_following_once_the_parcel_is_delivered(
    open_page: OpenPage, live_server: LiveServer, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(live_server.http)
    created = await create_shipment(live_server.http, parties.seller_headers)
    shipment = await bring_to(
        live_server.http, db_engine, parties, created["id"], "out_for_delivery"
    )
    opened, _ = await open_watched(open_page, shipment["tracking_number"])
    page = opened.page
    await expect(footer(page)).to_contain_text("This page updates itself as your parcel moves.")
    await page.wait_for_function("window.streams.length === 1 && window.streams[0].opened")

    code = await delivery_code(db_engine, shipment["id"])
    await report(live_server, parties, shipment, status="delivered", verification_code=code)

    await expect(status_heading(page)).to_have_text("Delivered")
    await expect(footer(page)).not_to_contain_text("updates itself")
    await expect(footer(page)).to_contain_text("this page has stopped updating")
    await page.wait_for_function("window.streams[0].closed")
    streams = await page.evaluate("window.streams")
    assert [stream["url"] for stream in streams] == [
        f"{live_server.base_url}/track/{shipment['tracking_number']}/stream"
    ]
    assert opened.errors == []


# --- the review form ---------------------------------------------------------------------------


async def open_review_link(
    open_page: OpenPage, live_server: LiveServer, db_engine: AsyncEngine, token: str | None = None
) -> OfflinePage:
    """A delivered shipment's page opened from its emailed review link (or with `token`)."""
    parties = await make_parties(live_server.http)
    created = await create_shipment(live_server.http, parties.seller_headers)
    await bring_to(live_server.http, db_engine, parties, created["id"], "delivered")
    [email] = await delivered_emails(db_engine, created["id"])
    link = urlsplit(email["review_url"])
    opened = await open_page(PHONE)
    query = link.query if token is None else f"review={token}"
    response = await opened.page.goto(f"{link.path}?{query}")
    assert response is not None
    assert response.status == 200
    return opened


async def test_the_review_form_sends_the_recipients_rating(
    open_page: OpenPage, live_server: LiveServer, db_engine: AsyncEngine
) -> None:
    """The emailed review link opens the page with the form; the page's script posts it."""
    opened = await open_review_link(open_page, live_server, db_engine)
    page = opened.page

    await page.get_by_label("4 stars", exact=True).check()
    await page.get_by_label("Comment (optional)").fill("Left with the neighbour, all fine.")
    await page.get_by_role("button", name="Send my review").click()

    await expect(page.locator("#review-result")).to_have_text("Thank you for your review!")
    assert await reviews_stored(db_engine) == 1
    assert opened.blocked == [], "the page reached beyond loopback"
    assert opened.errors == []


async def filled_stars(page: Page) -> int:
    """How many stars are drawn filled."""
    filled: int = await page.evaluate(
        """[...document.querySelectorAll('.stars label')]
             .filter(label => getComputedStyle(label, '::before').content.startsWith('"\u2605"'))
             .length"""
    )
    return filled


async def test_the_review_form_works_from_the_keyboard_on_a_phone(
    open_page: OpenPage,
    live_server: LiveServer,
    db_engine: AsyncEngine,
    save_screenshot: SaveScreenshot,
) -> None:
    opened = await open_review_link(open_page, live_server, db_engine)
    page = opened.page
    form = page.get_by_role("region", name="How was the delivery?")
    await expect(form.get_by_role("group", name="Your rating")).to_be_visible()
    await expect(form.get_by_role("radio")).to_have_count(5)
    assert await filled_stars(page) == 0

    # From the first star, the arrow keys move the choice along, as in any radio group.
    await form.get_by_role("radio", name="1 star", exact=True).focus()
    await page.keyboard.press("ArrowRight")
    await page.keyboard.press("ArrowRight")
    await expect(form.get_by_role("radio", name="3 stars")).to_be_checked()
    await expect(form.get_by_role("radio", name="3 stars")).to_be_focused()
    assert await filled_stars(page) == 3
    # The focused star is outlined, so a keyboard user sees where they are.
    outline = await page.evaluate(
        "getComputedStyle(document.activeElement.closest('label')).outlineStyle"
    )
    assert outline == "solid"

    await page.keyboard.press("Tab")
    await expect(form.get_by_label("Comment (optional)")).to_be_focused()
    await page.keyboard.type("Quick and friendly.")
    await page.keyboard.press("Tab")
    await expect(form.get_by_role("button", name="Send my review")).to_be_focused()
    await assert_fits_the_screen(page, PHONE)
    await save_screenshot(page, "tracking-review-phone")
    await page.keyboard.press("Enter")

    await expect(form.get_by_role("status")).to_have_text("Thank you for your review!")
    # Sent once: nothing left to send again.
    await expect(form.get_by_role("button", name="Send my review")).to_be_disabled()
    await expect(form.get_by_label("Comment (optional)")).to_be_disabled()
    assert await reviews_stored(db_engine) == 1
    await assert_fits_the_screen(page, PHONE)
    await save_screenshot(page, "tracking-review-sent-phone")
    assert opened.blocked == []
    assert opened.errors == []


async def test_the_review_form_says_when_the_review_was_not_sent(
    open_page: OpenPage,
    live_server: LiveServer,
    db_engine: AsyncEngine,
    save_screenshot: SaveScreenshot,
) -> None:
    opened = await open_review_link(open_page, live_server, db_engine, token="not-a-token")
    page = opened.page
    form = page.get_by_role("region", name="How was the delivery?")

    await form.get_by_label("5 stars", exact=True).check()
    await form.get_by_role("button", name="Send my review").click()

    result = form.get_by_role("status")
    await expect(result).to_have_text(
        "Sorry, this review link is not valid any more, so the review could not be sent."
    )
    await expect(result).to_have_attribute("data-state", "error")
    # Nothing was taken: the form stays usable.
    await expect(form.get_by_role("button", name="Send my review")).to_be_enabled()
    assert await reviews_stored(db_engine) == 0
    assert opened.errors == []
    await save_screenshot(page, "tracking-review-failed-phone")


# --- the icon ----------------------------------------------------------------------------------


async def test_the_page_has_its_own_icon(open_page: OpenPage, live_server: LiveServer) -> None:
    parties = await make_parties(live_server.http)
    shipment = await create_shipment(live_server.http, parties.seller_headers)
    opened = await open_tracking_page(open_page, PHONE, shipment["tracking_number"])
    page = opened.page

    href = await page.locator('head link[rel="icon"]').get_attribute("href")
    assert href == "/assets/favicon.svg"
    fetched = await page.evaluate(
        """href => fetch(href).then(response =>
             [response.status, response.headers.get('content-type')])""",
        href,
    )
    assert fetched == [200, "image/svg+xml"]
    # Under the page's own policy the icon loads as an image.
    width = await page.evaluate(
        """href => new Promise((resolve, reject) => {
             const image = new Image();
             image.onload = () => resolve(image.naturalWidth);
             image.onerror = () => reject(new Error('the icon did not load'));
             image.src = href;
           })""",
        href,
    )
    assert width > 0
    assert opened.blocked == []
    assert opened.errors == []
