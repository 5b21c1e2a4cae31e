"""Public tracking: the JSON view and the recipient's HTML page, keyed by the tracking number.

Both are public, so neither may show the recipient's name, email or phone, the address line or
any internal id. The page is server-rendered, needs no JavaScript and loads nothing external.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.shipments.service import TRACKING_ALPHABET
from tests.assertions import assert_problem
from tests.factories import verify_email
from tests.shipments.factories import (
    DESTINATION_ZIP,
    Parties,
    as_public,
    bring_to,
    create_shipment,
    get_shipment,
    make_parties,
    patch_shipment,
)

RECIPIENT_NAME = "Grace Hopper"
RECIPIENT_PHONE = "+1 617 555 0100"
ADDRESS_LINE = "77 Massachusetts Ave"
CITY = "Cambridge"
PARTNER_NAME = "Speedy Couriers"
UNKNOWN_NUMBER = "ZZZZZZZZZZZZZZ"  # well-formed, but nobody has it

PROGRESS_LABELS = {
    "placed": "Order placed",
    "in_transit": "In transit",
    "out_for_delivery": "Out for delivery",
    "delivered": "Delivered",
}
STEP_NUMBERS = {"placed": 1, "in_transit": 2, "out_for_delivery": 3, "delivered": 4}


@dataclass(frozen=True, slots=True)
class Tracked:
    parties: Parties
    shipment: dict[str, Any]

    @property
    def number(self) -> str:
        tracking_number: str = self.shipment["tracking_number"]
        return tracking_number

    def secrets(self) -> list[str]:
        """What a public view must never contain."""
        return [
            RECIPIENT_NAME,
            self.shipment["recipient"]["email"],
            RECIPIENT_PHONE,
            ADDRESS_LINE,
            self.shipment["id"],
            self.shipment["seller_id"],
            self.shipment["partner"]["id"],
        ]


async def tracked_shipment(
    client: httpx.AsyncClient,
    db_engine: AsyncEngine,
    status: str = "placed",
    **partner_overrides: Any,
) -> Tracked:
    """A shipment with a full recipient (name, email, phone, address line), moved to `status`."""
    parties = await make_parties(client, name=PARTNER_NAME, **partner_overrides)
    created = await create_shipment(
        client,
        parties.seller_headers,
        destination={"zip_code": DESTINATION_ZIP, "address_line": ADDRESS_LINE, "city": CITY},
        recipient={
            "name": RECIPIENT_NAME,
            "email": f"grace-{uuid.uuid4().hex[:8]}@example.com",
            "phone": RECIPIENT_PHONE,
        },
    )
    shipment = await bring_to(client, db_engine, parties, created["id"], status)
    return Tracked(parties, shipment)


async def report(tracked: Tracked, client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await patch_shipment(
        client, tracked.parties.partner_headers, tracked.shipment["id"], **body
    )
    assert response.status_code == 200, response.text
    shipment: dict[str, Any] = response.json()
    return shipment


def assert_no_secrets(text: str, tracked: Tracked) -> None:
    lowered = text.lower()
    for secret in tracked.secrets():
        assert secret.lower() not in lowered, f"{secret!r} leaked"
    # Nor in an escaped or differently spaced form.
    assert "hopper" not in lowered
    assert "5550100" not in re.sub(r"\D", "", text)


def keys_anywhere(value: object) -> set[str]:
    if isinstance(value, dict):
        keys = set(value)
        for item in value.values():
            keys |= keys_anywhere(item)
        return keys
    if isinstance(value, list):
        return set().union(*(keys_anywhere(item) for item in value))
    return set()


def eta_day(value: str) -> str:
    """How the page writes an ETA's day: 'Wednesday 25 November' (in UTC)."""
    moment = datetime.fromisoformat(value).astimezone(UTC)
    return f"{moment:%A} {moment.day} {moment:%B}"


class Outline(HTMLParser):
    """The parts of a page the tests look at: start tags, and the text of a few elements."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.start_tags: list[tuple[str, dict[str, str]]] = []
        self.texts: dict[str, list[str]] = {}
        self._open: list[tuple[str, str, list[str]]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.start_tags.append((tag, attributes))
        key = "current_step" if attributes.get("aria-current") == "step" else tag
        if key in ("current_step", "h1", "title"):
            self._open.append((tag, key, []))

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            _, key, parts = self._open.pop()
            self.texts.setdefault(key, []).append(" ".join("".join(parts).split()))

    def handle_data(self, data: str) -> None:
        for _, _, parts in self._open:
            parts.append(data)

    def tags(self, name: str) -> list[dict[str, str]]:
        return [attributes for tag, attributes in self.start_tags if tag == name]


async def get_page(client: httpx.AsyncClient, number: str, status: int = 200) -> Outline:
    response = await client.get(f"/t/{number}")
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return Outline(response.text)


# --- JSON view ---------------------------------------------------------------------------------


async def test_json_view_shows_where_the_parcel_is(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine, "in_transit")
    shipment = await report(
        tracked, client, status="in_transit", location_zip="02110", note="Left the Boston hub"
    )

    response = await client.get(f"/track/{tracked.number}")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    view = response.json()
    assert set(view) == {
        "tracking_number",
        "status",
        "estimated_delivery",
        "destination",
        "partner",
        "timeline",
        "timeline_total",
        "livemode",
    }
    assert view["livemode"] is True
    assert view["tracking_number"] == tracked.number
    assert view["status"] == "in_transit"
    assert datetime.fromisoformat(view["estimated_delivery"]) == datetime.fromisoformat(
        shipment["estimated_delivery"]
    )
    assert view["destination"] == {"zip_code": DESTINATION_ZIP, "city": CITY}
    assert view["partner"] == {"name": PARTNER_NAME}
    assert view["timeline"] == as_public(shipment["timeline"])
    assert [event["sequence"] for event in view["timeline"]] == [1, 2, 3]
    assert view["timeline_total"] == 3
    assert view["timeline"][-1]["description"] == "Left the Boston hub"
    assert view["timeline"][-1]["location_zip"] == "02110"


@pytest.mark.parametrize("status", ["placed", "out_for_delivery", "delivered", "cancelled"])
async def test_json_view_follows_the_status(
    client: httpx.AsyncClient, db_engine: AsyncEngine, status: str
) -> None:
    tracked = await tracked_shipment(client, db_engine, status)

    response = await client.get(f"/track/{tracked.number}")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == status
    assert response.json()["timeline"] == as_public(tracked.shipment["timeline"])


async def test_json_view_contains_no_personal_data_or_ids(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine, "out_for_delivery")

    response = await client.get(f"/track/{tracked.number}")

    assert response.status_code == 200, response.text
    assert_no_secrets(response.text, tracked)
    forbidden = {"id", "seller_id", "partner_id", "recipient", "email", "phone", "address_line"}
    assert not keys_anywhere(response.json()) & forbidden
    assert "address_line" not in response.text
    assert "verification_code" not in response.text


async def test_tracking_number_is_case_insensitive(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine)

    for number in (tracked.number.lower(), tracked.number.swapcase(), tracked.number):
        response = await client.get(f"/track/{number}")
        assert response.status_code == 200, response.text
        assert response.json()["tracking_number"] == tracked.number
        page = await get_page(client, number)
        assert tracked.number in page.texts["title"][0]


async def test_unknown_tracking_number_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/track/{UNKNOWN_NUMBER}")

    problem = assert_problem(response, 404, "tracking_number_not_found")
    assert UNKNOWN_NUMBER not in problem["detail"]


@pytest.mark.parametrize(
    "number",
    [
        "ABC",  # too short
        "ABCDEFGHJKMNPQRSTVWXYZ",  # too long
        "ABCD-EFGH-JKMN",
        "ABCDEFG%20HJKMN",
        "%3Cscript%3E1234",
        "ABCDEFGHJK%27--",
        "%C3%84BCDEFGHJKMN",  # a non-ASCII letter
        "ABCDEFGHJK%00MN",
    ],
)
async def test_malformed_tracking_number_is_a_client_error(
    client: httpx.AsyncClient, number: str
) -> None:
    response = await client.get(f"/track/{number}")

    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == response.status_code
    assert "<script>" not in response.text


async def test_tracking_needs_no_authentication(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine)

    assert "authorization" not in client.headers  # the factories pass headers per request
    assert (await client.get(f"/track/{tracked.number}")).status_code == 200
    assert (await client.get(f"/t/{tracked.number}")).status_code == 200
    # A stale or foreign token does not lock a recipient out of a public page either.
    stale = {"Authorization": "Bearer not-a-token"}
    assert (await client.get(f"/track/{tracked.number}", headers=stale)).status_code == 200
    assert (await client.get(f"/t/{tracked.number}", headers=stale)).status_code == 200


# --- HTML page ---------------------------------------------------------------------------------


async def test_page_shows_status_eta_destination_carrier_and_timeline(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine, "in_transit")
    await report(tracked, client, status="in_transit", location_zip="02110", note="Left the hub")
    shipment = await report(
        tracked, client, status="in_transit", location_zip="02139", note="At the Cambridge depot"
    )

    response = await client.get(f"/t/{tracked.number}")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = Outline(response.text)
    assert page.texts["h1"] == ["In transit"]
    assert eta_day(shipment["estimated_delivery"]) in response.text
    assert re.search(r"\(in [23] days\)", response.text)  # the ETA in words
    assert CITY in response.text
    assert DESTINATION_ZIP in response.text
    assert PARTNER_NAME in response.text
    descriptions = [event["description"] for event in shipment["timeline"]]
    assert descriptions[0] == "Shipment created"
    assert descriptions[2:] == ["Left the hub", "At the Cambridge depot"]
    history = response.text[response.text.index('id="history"') :]
    positions = [history.index(f">{escape(text)}<") for text in descriptions[::-1]]
    assert positions == sorted(positions), "the timeline is shown newest first"
    for event in shipment["timeline"]:
        stamp = datetime.fromisoformat(event["occurred_at"]).astimezone(UTC)
        assert f'datetime="{stamp.isoformat()}"' in response.text
    assert "ZIP 02110" in response.text


async def test_page_tells_a_failed_attempt_in_plain_words_in_the_order_things_happened(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine, "out_for_delivery")
    failed = await report(
        tracked,
        client,
        status="in_transit",
        failure_reason="access_restricted",
        note="Gate code 4471 did not work, neighbour Ada Lovelace asked to call back",
        location={"zip_code": DESTINATION_ZIP, "city": CITY, "lat": 42.3736, "lon": -71.1097},
    )
    # A hub scan made before the attempt, uploaded after it.
    hub_scan_time = datetime.fromisoformat(failed["timeline"][-2]["occurred_at"])
    await report(
        tracked,
        client,
        location={"zip_code": "02110", "city": "Boston"},
        occurred_at=hub_scan_time.isoformat(),
    )

    response = await client.get(f"/t/{tracked.number}")

    assert response.status_code == 200, response.text
    history = response.text[response.text.index('id="history"') :]
    attempt = history.index("The courier could not get access to the address")
    hub = history.index("Boston 02110")
    assert attempt < hub, "newest first, by when each event happened"
    assert f"{CITY} {DESTINATION_ZIP}" in history
    for private in ("4471", "Lovelace", "42.37", "-71.1"):
        assert private not in response.text
    assert_no_secrets(response.text, tracked)


@pytest.mark.parametrize("status", list(PROGRESS_LABELS))
async def test_page_marks_the_current_progress_step(
    client: httpx.AsyncClient, db_engine: AsyncEngine, status: str
) -> None:
    tracked = await tracked_shipment(client, db_engine, status)

    page = await get_page(client, tracked.number)

    label = PROGRESS_LABELS[status]
    assert page.texts["h1"] == [label]
    assert [attrs for attrs in page.tags("ol") if attrs.get("aria-label")] == [
        {"class": "progress", "aria-label": "Delivery progress"}
    ]
    (current,) = page.texts["current_step"]
    assert current.endswith(label)
    assert f"Step {STEP_NUMBERS[status]} of 4" in current
    assert len([attrs for attrs in page.tags("li") if "aria-current" in attrs]) == 1


async def test_delivered_page_says_when_and_promises_nothing_more(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine, "delivered")

    response = await client.get(f"/t/{tracked.number}")

    assert response.status_code == 200
    delivered = datetime.fromisoformat(tracked.shipment["timeline"][-1]["created_at"])
    assert eta_day(delivered.isoformat()) in response.text
    assert "Expected" not in response.text


@pytest.mark.parametrize(
    ("status", "label"), [("cancelled", "Cancelled"), ("returned", "Returned to sender")]
)
async def test_stopped_shipment_shows_no_misleading_progress(
    client: httpx.AsyncClient, db_engine: AsyncEngine, status: str, label: str
) -> None:
    tracked = await tracked_shipment(client, db_engine, status)

    response = await client.get(f"/t/{tracked.number}")

    assert response.status_code == 200
    page = Outline(response.text)
    assert page.texts["h1"] == [label]
    assert "current_step" not in page.texts
    assert not [tag for tag, attrs in page.start_tags if "aria-current" in attrs]
    assert "Delivery progress" not in response.text
    assert "Expected" not in response.text
    assert eta_day(tracked.shipment["estimated_delivery"]) not in response.text
    assert "will not be delivered" in response.text or "Nothing is on its way" in response.text


async def test_late_shipment_says_so(client: httpx.AsyncClient, db_engine: AsyncEngine) -> None:
    tracked = await tracked_shipment(client, db_engine, "in_transit")
    # Time passes without the partner revising the ETA (the API refuses an ETA in the past).
    past = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    async with db_engine.begin() as connection:
        await connection.execute(
            text("UPDATE shipments SET estimated_delivery = :eta WHERE id = :id"),
            {"eta": datetime.fromisoformat(past), "id": uuid.UUID(tracked.shipment["id"])},
        )

    response = await client.get(f"/t/{tracked.number}")

    assert response.status_code == 200
    assert "Running late" in response.text
    assert eta_day(past) in response.text


@pytest.mark.parametrize("status", ["placed", "out_for_delivery", "delivered", "returned"])
async def test_page_contains_no_personal_data_or_ids(
    client: httpx.AsyncClient, db_engine: AsyncEngine, status: str
) -> None:
    tracked = await tracked_shipment(client, db_engine, status)

    response = await client.get(f"/t/{tracked.number}")

    assert response.status_code == 200
    assert_no_secrets(response.text, tracked)


async def test_page_is_self_contained_and_accessible(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine, "in_transit")

    response = await client.get(f"/t/{tracked.number}")

    assert response.status_code == 200
    text = response.text
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert "@import" not in text
    # One script, this service's own file (live updates, reviews); nothing inline, which the
    # page's policy would refuse.
    assert re.findall(r"<script[^>]*>", text, re.I) == ['<script src="/assets/tracking.js" defer>']
    assert "<noscript" not in text.lower()
    page = Outline(text)
    (html,) = page.tags("html")
    assert re.fullmatch(r"[a-z]{2}(-[A-Z]{2})?", html["lang"])
    assert page.texts["title"][0].strip()
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in page.tags(
        "meta"
    )
    assert len(page.tags("h1")) == 1
    assert len(page.tags("main")) == 1
    assert page.tags("header")
    assert page.tags("h2"), "sections have headings"
    assert not page.tags("img")
    # The one link is the page's icon, a file of this service.
    assert page.tags("link") == [
        {"rel": "icon", "href": "/assets/favicon.svg", "type": "image/svg+xml"}
    ]


async def test_tracking_url_leads_to_the_page(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine)
    shipment = await get_shipment(client, tracked.parties.seller_headers, tracked.shipment["id"])

    path = urlsplit(shipment["tracking_url"]).path
    assert path == f"/t/{tracked.number}"
    page = await get_page(client, path.removeprefix("/t/"))
    assert page.texts["h1"] == ["Order placed"]


async def test_unknown_number_gets_a_404_page(client: httpx.AsyncClient) -> None:
    page = await get_page(client, UNKNOWN_NUMBER, status=404)

    assert page.texts["h1"] == ["We can't find that parcel"]
    assert page.tags("main")


@pytest.mark.parametrize("number", ["%3Cb%3Ehi%3C%5Cb%3E", "ABC", "x" * 300, "%C3%84%22%27"])
async def test_odd_numbers_get_an_escaped_404_page(client: httpx.AsyncClient, number: str) -> None:
    response = await client.get(f"/t/{number}")

    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "<b>" not in response.text
    if number.startswith("%3Cb"):
        assert "&lt;b&gt;hi" in response.text
    assert "x" * 41 not in response.text


async def test_page_escapes_text_from_the_partner(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine, "in_transit")
    note = '<script>alert(1)</script> & "friends" <img src=x onerror=alert(2)>'
    await report(tracked, client, note=note)

    response = await client.get(f"/t/{tracked.number}")

    assert response.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    assert "alert(1)</script>" not in response.text  # only the page's own script is a script
    assert response.text.count("<script") == 1
    assert "<img" not in response.text
    assert "&amp;" in response.text
    view = (await client.get(f"/track/{tracked.number}")).json()
    assert view["timeline"][-1]["description"] == note  # the JSON carries it as data


# --- tracking numbers --------------------------------------------------------------------------


async def test_tracking_numbers_are_random_unambiguous_and_unique(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client, max_handling_capacity=50)
    # More shipments than an unverified seller may create.
    await verify_email(client, db_engine, "seller", parties.seller["email"])

    numbers = [
        (await create_shipment(client, parties.seller_headers))["tracking_number"]
        for _ in range(50)
    ]

    assert len(set(numbers)) == 50
    for number in numbers:
        assert re.fullmatch(r"[A-Z2-9]{14}", number), number
        assert not set(number) & set("0O1IL"), number
        assert set(number) <= set(TRACKING_ALPHABET)
    # 14 symbols from this alphabet carry at least 60 bits.
    assert 14 * math.log2(len(set(TRACKING_ALPHABET))) >= 60
    # Not a counter or a shared prefix: 50 numbers use most of the alphabet in every position.
    assert len({number[0] for number in numbers}) > 10
    assert len(set("".join(numbers))) == len(set(TRACKING_ALPHABET))


@pytest.mark.parametrize("number", ["%00", "ab%00cd", "ABCDEFGHJKMNPQ%00"])
async def test_page_for_a_number_with_a_nul_is_not_found(
    client: httpx.AsyncClient, number: str
) -> None:
    response = await client.get(f"/t/{number}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")


# --- long timelines ----------------------------------------------------------------------------

PUBLIC_TIMELINE_LENGTH = 50


async def test_public_views_show_the_latest_fifty_events_and_the_total(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine, "in_transit")
    for index in range(59):
        await report(tracked, client, note=f"Scan number {index}")
    total = 2 + 59

    view = (await client.get(f"/track/{tracked.number}")).json()
    page = (await client.get(f"/t/{tracked.number}")).text

    assert view["timeline_total"] == total
    sequences = [event["sequence"] for event in view["timeline"]]
    assert sequences == list(range(total - PUBLIC_TIMELINE_LENGTH + 1, total + 1))
    assert view["timeline"][-1]["description"] == "Scan number 58"
    # The owner still sees every event.
    full = await get_shipment(client, tracked.parties.seller_headers, tracked.shipment["id"])
    assert len(full["timeline"]) == total
    assert f"The latest {PUBLIC_TIMELINE_LENGTH} of {total} updates" in page
    assert page.count("Scan number") == PUBLIC_TIMELINE_LENGTH
    assert "Scan number 58" in page
    assert "Scan number 8<" not in page  # the eleventh event, among those left out
    assert "Shipment created" not in page


async def test_a_short_timeline_is_shown_whole_without_a_note(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine, "in_transit")

    view = (await client.get(f"/track/{tracked.number}")).json()
    page = (await client.get(f"/t/{tracked.number}")).text

    assert view["timeline_total"] == len(view["timeline"]) == 2
    assert "The latest" not in page


async def test_pages_send_a_policy_that_allows_only_their_own_scripts(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine, "in_transit")

    found = await client.get(f"/t/{tracked.number}")
    not_found = await client.get("/t/NOSUCHPARCEL1")
    script = await client.get("/assets/tracking.js")

    for page in (found, not_found):
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self';" in policy  # no inline script, no other host
        assert "frame-ancestors 'none'" in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["x-content-type-options"] == "nosniff"
    assert not_found.status_code == 404
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["x-content-type-options"] == "nosniff"
    assert "EventSource" in script.text


# <time> elements as the server writes them: the moment, how to show it, and the UTC text.
TIME_ELEMENT = re.compile(r'<time datetime="([^"]+)" data-show="(\w+)">([^<]*)</time>')


@pytest.mark.parametrize("status", ["in_transit", "delivered"])
async def test_page_writes_its_times_in_utc_and_says_so(
    client: httpx.AsyncClient, db_engine: AsyncEngine, status: str
) -> None:
    """What a reader without JavaScript gets: every time in UTC, and a page that says so. Each
    time also carries its exact moment, from which the page's script writes it in the reader's
    own time zone (tests/browser)."""
    tracked = await tracked_shipment(client, db_engine, status)
    shipment = await get_shipment(client, tracked.parties.seller_headers, tracked.shipment["id"])

    response = await client.get(f"/t/{tracked.number}")

    assert response.status_code == 200
    times = TIME_ELEMENT.findall(response.text)
    assert times, "the page shows its times in <time> elements"
    for iso, show, shown in times:
        moment = datetime.fromisoformat(iso)
        assert moment.utcoffset() == timedelta(0), iso
        if show == "day":
            assert shown.startswith(f"{moment:%A} {moment.day} {moment:%B}"), shown
        else:
            assert shown.endswith(f"{moment:%H:%M} UTC"), shown
    events = {
        datetime.fromisoformat(event["created_at"]).astimezone(UTC)
        for event in shipment["timeline"]
    }
    assert {datetime.fromisoformat(iso) for iso, show, _ in times if show == "moment"} == events
    assert '<span id="time-note">Times are in UTC.</span>' in response.text


async def test_the_pages_icon_is_served_by_the_service(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    tracked = await tracked_shipment(client, db_engine)
    page = await client.get(f"/t/{tracked.number}")
    (icon,) = [tag for tag in Outline(page.text).tags("link") if tag.get("rel") == "icon"]
    # Where the page points, and where browsers look when no page tells them.
    for path in (icon["href"], "/favicon.ico"):
        response = await client.get(path)

        assert response.status_code == 200, path
        assert response.headers["content-type"] == "image/svg+xml"
        cache_control = response.headers["cache-control"]
        max_age = re.search(r"\bmax-age=(\d+)", cache_control)
        assert "public" in cache_control
        assert max_age is not None
        assert int(max_age.group(1)) >= 24 * 3600
        assert response.headers["x-content-type-options"] == "nosniff"
        svg = response.text
        assert svg.startswith("<svg ")
        # Nothing to run and nothing to fetch, from anywhere.
        assert "<script" not in svg.lower()
        assert not re.search(r"\b(?:href|src)\s*=|url\(", svg, re.I)
    assert icon["href"] == "/assets/favicon.svg"
    assert "img-src 'self'" in page.headers["content-security-policy"]
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [path for path in paths if "favicon" in path], "a file, not part of the API"
