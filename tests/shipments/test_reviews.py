"""Recipient reviews: rating 1-5 and an optional comment, once, after delivery.

The recipient proves who they are with the signed, expiring token in the link of the "delivered"
email, read here from the outbox row (the notification seam). The owner seller (and the assigned
partner) then sees the review on the shipment. A refused review stores nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import jwt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.accounts.tokens import LinkTokens
from backend.config import Settings
from tests.assertions import assert_problem
from tests.conftest import count_rows
from tests.factories import bearer
from tests.shipments.factories import (
    Parties,
    bring_to,
    create_shipment,
    delivery_code,
    get_shipment,
    make_parties,
    patch_shipment,
)

UNKNOWN_NUMBER = "ZZZZZZZZZZZZZZ"  # well-formed, but nobody has it


# --- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    parties: Parties
    shipment: dict[str, Any]
    review_url: str

    @property
    def id(self) -> str:
        shipment_id: str = self.shipment["id"]
        return shipment_id

    @property
    def number(self) -> str:
        tracking_number: str = self.shipment["tracking_number"]
        return tracking_number

    @property
    def token(self) -> str:
        """The `review` query parameter of the emailed link."""
        values = parse_qs(urlsplit(self.review_url).query).get("review", [])
        assert len(values) == 1, self.review_url
        return values[0]


async def delivered_emails(
    db_engine: AsyncEngine, shipment_id: str | uuid.UUID
) -> list[dict[str, Any]]:
    """Payloads of the outbox rows for the shipment's "delivered" email, oldest first."""
    query = text(
        "SELECT payload FROM outbox_messages"
        " WHERE shipment_id = :id AND payload ->> 'template' = 'delivered'"
        " ORDER BY created_at, id"
    )
    async with db_engine.connect() as connection:
        rows = (await connection.execute(query, {"id": uuid.UUID(str(shipment_id))})).all()
    return [dict(row.payload) for row in rows]


async def deliver(
    client: httpx.AsyncClient, db_engine: AsyncEngine, parties: Parties | None = None
) -> Delivered:
    """A new shipment taken to `delivered` through the API, with the emailed review link."""
    parties = parties or await make_parties(client)
    created = await create_shipment(client, parties.seller_headers)
    shipment = await bring_to(client, db_engine, parties, created["id"], "delivered")
    emails = await delivered_emails(db_engine, created["id"])
    assert len(emails) == 1, emails
    review_url: str = emails[0]["review_url"]
    return Delivered(parties, shipment, review_url)


async def post_review(
    client: httpx.AsyncClient, tracking_number: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(f"/track/{tracking_number}/review", json=body)


async def reviews_stored(db_engine: AsyncEngine) -> int:
    return await count_rows(db_engine, "reviews")


def hand_made_review_token(
    settings: Settings, shipment_id: str, *, expires_in: timedelta, typ: str = "review+jwt"
) -> str:
    """A review token built with PyJWT, with LinkTokens' claims and header but our own `exp`."""
    now = datetime.now(UTC)
    claims = {
        "sub": shipment_id,
        "aud": "shiptrack:review:shipment",
        "iat": now - timedelta(days=40),
        "exp": now + expires_in,
        "iss": settings.jwt_issuer,
    }
    return jwt.encode(
        claims,
        settings.jwt_secret_key.get_secret_value(),
        algorithm="HS256",
        headers={"typ": typ},
    )


def assert_review(review: object, rating: int, comment: str | None) -> None:
    assert isinstance(review, dict), review
    assert set(review) == {"rating", "comment", "created_at"}
    assert review["rating"] == rating
    assert review["comment"] == comment
    created_at = datetime.fromisoformat(review["created_at"])
    assert created_at.tzinfo is not None


class ReviewFormOutline(HTMLParser):
    """Forms, radios and textareas of a page, with the labels that name them."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict[str, str]] = []
        # (attributes, inside a <label>?)
        self.inputs: list[tuple[dict[str, str], bool]] = []
        self.textareas: list[dict[str, str]] = []
        self.label_targets: set[str] = set()
        self._label_depth = 0
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "label":
            self._label_depth += 1
            if "for" in attributes:
                self.label_targets.add(attributes["for"])
        elif tag == "form":
            self.forms.append(attributes)
        elif tag == "input":
            self.inputs.append((attributes, self._label_depth > 0))
        elif tag == "textarea":
            self.textareas.append(attributes)

    def handle_endtag(self, tag: str) -> None:
        if tag == "label" and self._label_depth:
            self._label_depth -= 1

    def rating_radios(self) -> list[tuple[dict[str, str], bool]]:
        return [
            (attributes, labelled)
            for attributes, labelled in self.inputs
            if attributes.get("type") == "radio" and attributes.get("name") == "rating"
        ]


# --- the delivered email ---------------------------------------------------------------------


async def test_delivering_queues_a_delivered_email_with_a_review_link(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    parties = await make_parties(client)
    created = await create_shipment(client, parties.seller_headers)
    # Before delivery there is no "delivered" email.
    await bring_to(client, db_engine, parties, created["id"], "out_for_delivery")
    assert await delivered_emails(db_engine, created["id"]) == []

    code = await delivery_code(db_engine, created["id"])
    response = await patch_shipment(
        client,
        parties.partner_headers,
        created["id"],
        status="delivered",
        verification_code=code,
    )
    assert response.status_code == 200, response.text

    emails = await delivered_emails(db_engine, created["id"])
    assert len(emails) == 1
    email = emails[0]
    assert email["to"] == created["recipient"]["email"]
    prefix = f"{settings.public_base_url}/t/{created['tracking_number']}?review="
    assert email["review_url"].startswith(prefix), email["review_url"]
    token = email["review_url"].removeprefix(prefix)
    assert token
    # The token is a review link for this very shipment.
    subject, _ = LinkTokens(settings).decode(token, "review", "shipment", [])
    assert subject == uuid.UUID(created["id"])


# --- the happy path --------------------------------------------------------------------------


async def test_review_with_the_emailed_token_is_stored_and_shown_to_the_owner_and_partner(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    delivered = await deliver(client, db_engine)
    assert delivered.shipment["review"] is None

    response = await post_review(
        client,
        delivered.number,
        {"token": delivered.token, "rating": 4, "comment": "Quick and careful."},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert_review(created, 4, "Quick and careful.")
    assert await reviews_stored(db_engine) == 1

    seller_view = await get_shipment(client, delivered.parties.seller_headers, delivered.id)
    assert seller_view["review"] == created

    listing = await client.get("/shipments", headers=delivered.parties.seller_headers)
    assert listing.status_code == 200, listing.text
    [listed] = [item for item in listing.json()["items"] if item["id"] == delivered.id]
    assert listed["review"] == created

    partner_view = await get_shipment(client, delivered.parties.partner_headers, delivered.id)
    assert partner_view["review"] == created
    partner_listing = await client.get("/shipments", headers=delivered.parties.partner_headers)
    assert partner_listing.status_code == 200, partner_listing.text
    [partner_listed] = [i for i in partner_listing.json()["items"] if i["id"] == delivered.id]
    assert partner_listed["review"] == created


async def test_comment_is_optional(client: httpx.AsyncClient, db_engine: AsyncEngine) -> None:
    delivered = await deliver(client, db_engine)
    response = await post_review(client, delivered.number, {"token": delivered.token, "rating": 5})
    assert response.status_code == 201, response.text
    assert_review(response.json(), 5, None)
    shown = await get_shipment(client, delivered.parties.seller_headers, delivered.id)
    assert_review(shown["review"], 5, None)


async def test_a_review_is_only_on_its_own_shipment(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    reviewed = await deliver(client, db_engine, parties)
    other = await deliver(client, db_engine, parties)
    response = await post_review(client, reviewed.number, {"token": reviewed.token, "rating": 2})
    assert response.status_code == 201, response.text
    assert (await get_shipment(client, parties.seller_headers, other.id))["review"] is None
    assert (await get_shipment(client, parties.seller_headers, reviewed.id))["review"][
        "rating"
    ] == 2


async def test_a_comment_of_exactly_1000_characters_is_accepted(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    delivered = await deliver(client, db_engine)
    comment = "é" * 1000
    response = await post_review(
        client, delivered.number, {"token": delivered.token, "rating": 3, "comment": comment}
    )
    assert response.status_code == 201, response.text
    assert response.json()["comment"] == comment


# --- once only -------------------------------------------------------------------------------


async def test_a_second_review_is_refused_and_the_first_stays(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    delivered = await deliver(client, db_engine)
    first = await post_review(
        client, delivered.number, {"token": delivered.token, "rating": 5, "comment": "Great"}
    )
    assert first.status_code == 201, first.text

    second = await post_review(
        client, delivered.number, {"token": delivered.token, "rating": 1, "comment": "Changed"}
    )
    assert_problem(second, 409, "review_already_given")

    assert await reviews_stored(db_engine) == 1
    shown = await get_shipment(client, delivered.parties.seller_headers, delivered.id)
    assert shown["review"] == first.json()


async def test_concurrent_reviews_with_the_same_token_store_exactly_one(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    delivered = await deliver(client, db_engine)
    requests = [
        post_review(
            client,
            delivered.number,
            {"token": delivered.token, "rating": 1 + n % 5, "comment": f"try {n}"},
        )
        for n in range(10)
    ]
    results = await asyncio.gather(*requests, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} requests raised: {errors[0]!r}"
    responses = [r for r in results if isinstance(r, httpx.Response)]

    assert Counter(r.status_code for r in responses) == {201: 1, 409: 9}
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "review_already_given")
    [winner] = [r.json() for r in responses if r.status_code == 201]

    assert await reviews_stored(db_engine) == 1
    shown = await get_shipment(client, delivered.parties.seller_headers, delivered.id)
    assert shown["review"] == winner


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rating",
    [0, 6, -1, 3.5, 5.0, "5", True, None],
    ids=["zero", "six", "negative", "fraction", "float-five", "string", "bool", "null"],
)
async def test_invalid_ratings_are_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine, rating: object
) -> None:
    delivered = await deliver(client, db_engine)
    response = await post_review(
        client, delivered.number, {"token": delivered.token, "rating": rating}
    )
    assert_problem(response, 422, "validation_failed")
    assert await reviews_stored(db_engine) == 0
    # The token is still good for a valid review afterwards.
    valid = await post_review(client, delivered.number, {"token": delivered.token, "rating": 5})
    assert valid.status_code == 201, valid.text


@pytest.mark.parametrize(
    "body",
    [
        {"rating": 4, "comment": "x" * 1001},
        {"rating": 4, "comment": "nice\x00parcel"},
        {"rating": 4, "comment": "ok", "author": "Mallory"},
        {"rating": 4, "shipment_id": str(uuid.uuid4())},
        {"comment": "no rating"},
    ],
    ids=["comment-too-long", "comment-with-nul", "unknown-field", "unknown-id-field", "no-rating"],
)
async def test_invalid_bodies_are_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine, body: dict[str, Any]
) -> None:
    delivered = await deliver(client, db_engine)
    response = await post_review(client, delivered.number, {"token": delivered.token, **body})
    assert_problem(response, 422, "validation_failed")
    assert await reviews_stored(db_engine) == 0


async def test_a_missing_token_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    delivered = await deliver(client, db_engine)
    for body in ({"rating": 5}, {"token": "", "rating": 5}):
        response = await post_review(client, delivered.number, body)
        assert_problem(response, 422, "validation_failed")
    assert await reviews_stored(db_engine) == 0


# --- the token -------------------------------------------------------------------------------


async def test_a_token_for_another_shipment_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    first = await deliver(client, db_engine, parties)
    second = await deliver(client, db_engine, parties)
    response = await post_review(client, second.number, {"token": first.token, "rating": 1})
    assert_problem(response, 400, "invalid_link_token")
    assert await reviews_stored(db_engine) == 0
    assert (await get_shipment(client, parties.seller_headers, second.id))["review"] is None


async def test_an_expired_token_is_refused_while_the_same_token_unexpired_works(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    delivered = await deliver(client, db_engine)
    expired = hand_made_review_token(settings, delivered.id, expires_in=-timedelta(days=1))
    response = await post_review(client, delivered.number, {"token": expired, "rating": 5})
    assert_problem(response, 400, "invalid_link_token")
    assert await reviews_stored(db_engine) == 0

    # The same claims with an `exp` in the future pass: only the expiry made the difference.
    fresh = hand_made_review_token(settings, delivered.id, expires_in=timedelta(days=1))
    accepted = await post_review(client, delivered.number, {"token": fresh, "rating": 5})
    assert accepted.status_code == 201, accepted.text


@pytest.mark.parametrize("typ", ["at+jwt", "verify+jwt", "JWT"])
async def test_a_token_with_the_review_claims_but_another_type_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, typ: str
) -> None:
    delivered = await deliver(client, db_engine)
    token = hand_made_review_token(settings, delivered.id, expires_in=timedelta(days=1), typ=typ)
    response = await post_review(client, delivered.number, {"token": token, "rating": 5})
    assert_problem(response, 400, "invalid_link_token")
    assert await reviews_stored(db_engine) == 0


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "x" * 2000],
    ids=["word", "three-parts", "alg-none", "long"],
)
async def test_a_garbage_token_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine, token: str
) -> None:
    delivered = await deliver(client, db_engine)
    response = await post_review(client, delivered.number, {"token": token, "rating": 5})
    assert_problem(response, 400, "invalid_link_token")
    assert await reviews_stored(db_engine) == 0


async def test_a_token_signed_with_another_key_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    delivered = await deliver(client, db_engine)
    now = datetime.now(UTC)
    forged = jwt.encode(
        {
            "sub": delivered.id,
            "aud": "shiptrack:review:shipment",
            "iat": now,
            "exp": now + timedelta(days=1),
            "iss": settings.jwt_issuer,
        },
        "not-the-secret-key-not-the-secret-key",
        algorithm="HS256",
        headers={"typ": "review+jwt"},
    )
    response = await post_review(client, delivered.number, {"token": forged, "rating": 5})
    assert_problem(response, 400, "invalid_link_token")
    assert await reviews_stored(db_engine) == 0


async def test_an_access_token_is_not_a_review_token(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    delivered = await deliver(client, db_engine)
    for headers in (delivered.parties.seller_headers, delivered.parties.partner_headers):
        access_token = headers["Authorization"].removeprefix("Bearer ")
        response = await post_review(client, delivered.number, {"token": access_token, "rating": 5})
        assert_problem(response, 400, "invalid_link_token")
    assert await reviews_stored(db_engine) == 0


async def test_a_link_token_of_another_purpose_is_not_a_review_token(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    delivered = await deliver(client, db_engine)
    links = LinkTokens(settings)
    shipment_id = uuid.UUID(delivered.id)
    others = [
        links.issue("verify", "shipment", shipment_id, timedelta(days=1)),
        links.issue("review", "seller", shipment_id, timedelta(days=1)),
    ]
    for token in others:
        response = await post_review(client, delivered.number, {"token": token, "rating": 5})
        assert_problem(response, 400, "invalid_link_token")
    assert await reviews_stored(db_engine) == 0


async def test_a_review_token_is_not_a_bearer_token(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    delivered = await deliver(client, db_engine)
    headers = bearer(delivered.token)
    for path in ("/shipments", f"/shipments/{delivered.id}", "/seller/me", "/partner/me"):
        response = await client.get(path, headers=headers)
        assert_problem(response, 401, "invalid_token")


async def test_unknown_tracking_number_is_not_found(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    delivered = await deliver(client, db_engine)
    response = await post_review(client, UNKNOWN_NUMBER, {"token": delivered.token, "rating": 5})
    assert_problem(response, 404, "tracking_number_not_found")
    assert await reviews_stored(db_engine) == 0


@pytest.mark.parametrize("status", ["placed", "in_transit", "out_for_delivery", "returned"])
async def test_a_shipment_not_delivered_cannot_be_reviewed(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, status: str
) -> None:
    parties = await make_parties(client)
    created = await create_shipment(client, parties.seller_headers)
    shipment = await bring_to(client, db_engine, parties, created["id"], status)
    token = LinkTokens(settings).issue(
        "review", "shipment", uuid.UUID(created["id"]), timedelta(days=1)
    )
    response = await post_review(client, shipment["tracking_number"], {"token": token, "rating": 5})
    assert_problem(response, 409, "shipment_not_delivered")
    assert await reviews_stored(db_engine) == 0
    assert (await get_shipment(client, parties.seller_headers, created["id"]))["review"] is None


async def test_a_cancelled_shipment_cannot_be_reviewed(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    parties = await make_parties(client)
    created = await create_shipment(client, parties.seller_headers)
    await bring_to(client, db_engine, parties, created["id"], "cancelled")
    token = LinkTokens(settings).issue(
        "review", "shipment", uuid.UUID(created["id"]), timedelta(days=1)
    )
    response = await post_review(client, created["tracking_number"], {"token": token, "rating": 5})
    assert_problem(response, 409, "shipment_not_delivered")
    assert await reviews_stored(db_engine) == 0


# --- the tracking page -----------------------------------------------------------------------


async def test_the_emailed_link_opens_the_page_with_a_review_form(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    delivered = await deliver(client, db_engine)
    link = urlsplit(delivered.review_url)
    response = await client.get(f"{link.path}?{link.query}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    outline = ReviewFormOutline(page)

    [form] = outline.forms
    radios = outline.rating_radios()
    assert sorted(attributes["value"] for attributes, _ in radios) == ["1", "2", "3", "4", "5"]
    assert all(labelled for _, labelled in radios), "every rating radio sits in a <label>"
    [comment] = [t for t in outline.textareas if t.get("name") == "comment"]
    assert comment.get("id") in outline.label_targets, "the comment box has a <label for>"
    assert comment.get("maxlength") == "1000"

    # The page's script (a file of ours, page policy allows no inline script) posts the form
    # with the token and tracking number it carries.
    assert form["data-token"] == delivered.token
    assert form["data-tracking-number"] == delivered.number
    assert '<script src="/assets/tracking.js" defer>' in page


async def test_the_review_link_of_an_undelivered_shipment_shows_no_form(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    parties = await make_parties(client)
    created = await create_shipment(client, parties.seller_headers)
    await bring_to(client, db_engine, parties, created["id"], "out_for_delivery")
    token = LinkTokens(settings).issue(
        "review", "shipment", uuid.UUID(created["id"]), timedelta(days=1)
    )
    response = await client.get(f"/t/{created['tracking_number']}?review={token}")
    assert response.status_code == 200, response.text
    outline = ReviewFormOutline(response.text)
    assert outline.forms == []
    assert outline.rating_radios() == []
    assert outline.textareas == []
    assert token not in response.text
    assert f"/track/{created['tracking_number']}/review" not in response.text


async def test_the_page_without_a_review_token_shows_no_form(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    delivered = await deliver(client, db_engine)
    response = await client.get(f"/t/{delivered.number}")
    assert response.status_code == 200, response.text
    outline = ReviewFormOutline(response.text)
    assert outline.forms == []
    assert outline.rating_radios() == []
    assert f"/track/{delivered.number}/review" not in response.text


@pytest.mark.parametrize(
    "hostile",
    ['</script>"', "</script><script>alert(1)</script>", "\"});alert('x');//", "<!--<script>"],
    ids=["close-script-quote", "inject-script", "break-string", "html-comment"],
)
async def test_the_token_in_the_page_cannot_break_out_of_its_attribute(
    client: httpx.AsyncClient, db_engine: AsyncEngine, hostile: str
) -> None:
    delivered = await deliver(client, db_engine)
    benign = await client.get(f"/t/{delivered.number}?review=benign-token")
    assert benign.status_code == 200, benign.text
    closing_tags = benign.text.lower().count("</script")
    assert closing_tags == 1

    response = await client.get(f"/t/{delivered.number}?review={quote(hostile, safe='')}")
    assert response.status_code == 200, response.text
    page = response.text
    assert '</script>"' not in page
    assert "alert(1)</script>" not in page
    assert "<!--<script>" not in page
    # Only the page's own scripts close: the token added none.
    assert page.lower().count("</script") == closing_tags
    assert page.lower().count("<script") == benign.text.lower().count("<script")
    # And the form carries exactly what was in the link, for the script to send.
    [form] = ReviewFormOutline(page).forms
    assert form["data-token"] == hostile
