"""The recipient's emails (product.md §12.5), from the API change that queues them to the
message an SMTP server receives: shipment created (tracking link), out for delivery (the code),
delivered, cancelled, returned, a new delivery day. And what is not sent: nothing for a change
that was refused or rolled back, nor for an estimate moved within its day. The failed attempt
and corrected details emails, and a return's reason and count, which no API change sends yet,
are queued through RecipientEmails on a stored shipment and sent by the same worker.

Sign-ups queue account emails of their own, so these tests look at what was sent to the
shipment's recipient and at the outbox rows of the shipment.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.accounts.tokens import LinkTokens
from backend.db import unit_of_work
from backend.outbox.models import OutboxStatus
from backend.outbox.wording import human_day
from backend.redis_client import create_redis
from backend.shipments.expiry import PlacedExpiry, expiry_note
from backend.shipments.failures import FAILURE_WORDS, FailureReason
from backend.shipments.models import Shipment
from backend.shipments.recipient_emails import RecipientEmails
from tests.assertions import assert_problem
from tests.conftest import count_rows
from tests.outbox.conftest import (
    PUBLIC_BASE_URL,
    OutboxRow,
    ReceivedMail,
    SmtpServer,
    WorkerFactory,
    drain,
    outbox_rows,
)
from tests.shipments.conftest import TrackApp
from tests.shipments.factories import (
    Parties,
    bring_to,
    create_shipment,
    delivery_code,
    make_parties,
    patch_shipment,
    shipment_body,
    try_again_after_a_failed_attempt,
)
from tests.shipments.test_shipment_limits import age_shipment

EMAIL_FROM = "Shiptrack <notify@track.example>"
SIX_DIGITS = re.compile(r"(?<![0-9])[0-9]{6}(?![0-9])")


def recipient_of(shipment: dict[str, Any]) -> str:
    address: str = shipment["recipient"]["email"]
    return address


async def rows_to(db_engine: AsyncEngine, address: str) -> list[OutboxRow]:
    return [row for row in await outbox_rows(db_engine) if row.payload.get("to") == address]


async def assert_all_sent(db_engine: AsyncEngine, shipment: dict[str, Any], count: int) -> None:
    rows = await outbox_rows(db_engine, shipment["id"])
    assert len(rows) == count
    for row in rows:
        assert row.payload["to"] == recipient_of(shipment)
        assert row.status == OutboxStatus.sent, row
        assert row.sent_at is not None
        assert row.claimed_by is None
        assert row.last_error is None


def only_mail(smtp_server: SmtpServer, shipment: dict[str, Any], subject_part: str) -> ReceivedMail:
    """The one message to the shipment's recipient whose subject has `subject_part`."""
    mails = [
        mail
        for mail in smtp_server.received_by(recipient_of(shipment))
        if subject_part in mail.subject
    ]
    assert len(mails) == 1, [mail.subject for mail in mails]
    mail = mails[0]
    recipient = recipient_of(shipment)
    assert mail.rcpt_tos == [recipient]
    assert mail.message["To"] == recipient
    assert mail.message["From"] == EMAIL_FROM
    assert mail.mail_from == "notify@track.example"
    assert mail.message.get_content_type() == "multipart/alternative"
    assert shipment["tracking_number"] in mail.subject
    return mail


async def new_shipment(track: TrackApp, **overrides: Any) -> tuple[Parties, dict[str, Any]]:
    parties = await make_parties(track.client, name="Speedy Couriers")
    shipment = await create_shipment(track.client, parties.seller_headers, **overrides)
    return parties, shipment


# --- the three emails ------------------------------------------------------------------------


async def test_shipment_created_email_links_to_the_configured_public_url(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties = await make_parties(track_app.client, name="Speedy Couriers")
    body = shipment_body(recipient={"name": "Grace Hopper", "email": "grace@example.com"})
    # The request names another host, in every way a client can: links must not follow it.
    response = await track_app.client.post(
        "/shipments",
        json=body,
        headers={
            **parties.seller_headers,
            "Host": "evil.example",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "http",
        },
    )
    assert response.status_code == 201, response.text
    shipment = response.json()
    link = f"{PUBLIC_BASE_URL}/t/{shipment['tracking_number']}"

    await drain(make_worker(email_from=EMAIL_FROM))

    [mail] = smtp_server.received_by("grace@example.com")
    assert mail is only_mail(smtp_server, shipment, "on its way")
    plain, html = mail.part("plain"), mail.part("html")
    assert link in plain
    assert f'href="{link}"' in html
    for part in (plain, html):
        assert "Grace Hopper" in part
        assert parties.seller["name"] in part
        assert "Speedy Couriers" in part
        assert "2 paperback books" in part
    raw = mail.message.as_string()
    assert "evil.example" not in raw
    assert "testserver" not in raw
    await assert_all_sent(db_engine, shipment, 1)
    [row] = await outbox_rows(db_engine, shipment["id"])
    assert mail.message_id == row.message_id


async def test_html_part_escapes_what_the_seller_wrote(
    track_app: TrackApp,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    content = '<img src=x onerror="alert(1)"> & "friends"'
    _, shipment = await new_shipment(track_app, content=content)

    await drain(make_worker(email_from=EMAIL_FROM))

    mail = only_mail(smtp_server, shipment, "on its way")
    assert content in mail.part("plain")
    html = mail.part("html")
    assert "<img" not in html
    assert "&lt;img src=x onerror=" in html
    assert "&amp;" in html


async def test_out_for_delivery_email_carries_the_code_that_delivers(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    tracking_number = shipment["tracking_number"]
    await bring_to(track_app.client, db_engine, parties, shipment["id"], "out_for_delivery")

    await drain(make_worker(email_from=EMAIL_FROM))

    assert len(smtp_server.received_by(recipient_of(shipment))) == 2
    mail = only_mail(smtp_server, shipment, "delivery code")
    plain, html = mail.part("plain"), mail.part("html")
    codes = set(SIX_DIGITS.findall(plain))
    assert len(codes) == 1, plain
    [code] = codes
    assert code in html
    # Subjects end up in logs, notification previews and lock screens.
    assert code not in mail.subject
    assert f"{PUBLIC_BASE_URL}/t/{tracking_number}" in plain
    assert f'href="{PUBLIC_BASE_URL}/t/{tracking_number}"' in html
    await assert_all_sent(db_engine, shipment, 2)
    # Once sent, the outbox keeps no copy of the code (the shipment has only its hash).
    async with db_engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT count(*) FROM outbox_messages WHERE payload::text LIKE :code"),
            {"code": f"%{code}%"},
        )
    assert stored == 0

    # The code read from the email is the one the partner's delivery needs.
    response = await patch_shipment(
        track_app.client,
        parties.partner_headers,
        shipment["id"],
        status="delivered",
        verification_code=code,
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "delivered"


async def test_delivered_email_reaches_the_recipient(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    tracking_number = shipment["tracking_number"]
    await bring_to(track_app.client, db_engine, parties, shipment["id"], "delivered")

    await drain(make_worker(email_from=EMAIL_FROM))

    mails = smtp_server.received_by(recipient_of(shipment))
    assert len(mails) == 3
    assert len({mail.message_id for mail in mails}) == 3  # one message per step
    mail = only_mail(smtp_server, shipment, "was delivered")
    plain, html = mail.part("plain"), mail.part("html")
    for part in (plain, html):
        assert "Grace Hopper" in part
        assert "Speedy Couriers" in part
        assert "2 paperback books" in part
    assert f"{PUBLIC_BASE_URL}/t/{tracking_number}" in plain
    assert f'href="{PUBLIC_BASE_URL}/t/{tracking_number}"' in html
    await assert_all_sent(db_engine, shipment, 3)


async def test_emails_wait_in_the_outbox_until_a_worker_runs(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    _, shipment = await new_shipment(track_app)

    [row] = await outbox_rows(db_engine, shipment["id"])
    assert row.kind == "email"
    assert row.status == OutboxStatus.pending
    assert row.payload["template"] == "shipment_created"
    assert row.payload["to"] == recipient_of(shipment)
    assert row.payload["tracking_url"] == f"{PUBLIC_BASE_URL}/t/{shipment['tracking_number']}"
    assert smtp_server.received == []

    await drain(make_worker(email_from=EMAIL_FROM))
    mail = only_mail(smtp_server, shipment, "on its way")
    assert mail.message_id == row.message_id


# --- nothing for a change that did not happen --------------------------------------------------


async def test_a_create_refused_for_want_of_a_partner_queues_nothing(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties = await make_parties(track_app.client, max_handling_capacity=1)
    first = await create_shipment(track_app.client, parties.seller_headers)

    # The only partner serving the zip code is full; and nobody serves the other zip code.
    full_body = shipment_body()
    full = await track_app.client.post("/shipments", json=full_body, headers=parties.seller_headers)
    assert_problem(full, 409, "no_partner_available")
    unserved_body = shipment_body(
        destination={"zip_code": "99501", "address_line": "1 Far Rd", "city": "Anchorage"}
    )
    unserved = await track_app.client.post(
        "/shipments", json=unserved_body, headers=parties.seller_headers
    )
    assert_problem(unserved, 409, "no_partner_available")

    assert await count_rows(db_engine, "shipments") == 1
    [row] = [row for row in await outbox_rows(db_engine) if row.shipment_id is not None]
    assert str(row.shipment_id) == first["id"]
    refused_recipients = [
        full_body["recipient"]["email"],
        unserved_body["recipient"]["email"],
    ]
    for address in refused_recipients:
        assert await rows_to(db_engine, address) == []

    await drain(make_worker(email_from=EMAIL_FROM))
    only_mail(smtp_server, first, "on its way")
    for address in refused_recipients:
        assert smtp_server.received_by(address) == []


async def test_refused_transitions_queue_nothing(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    shipment_id = shipment["id"]
    client, partner = track_app.client, parties.partner_headers

    async def templates() -> list[str]:
        return [row.payload["template"] for row in await outbox_rows(db_engine, shipment_id)]

    # Skipping ahead is refused: no delivered email, no code.
    skipped = await patch_shipment(client, partner, shipment_id, status="delivered")
    assert_problem(skipped, 409, "invalid_transition")
    in_transit = await patch_shipment(client, partner, shipment_id, status="in_transit")
    assert in_transit.status_code == 200, in_transit.text
    # A stale version is refused: no delivery code is issued, so none is sent.
    stale = await client.patch(
        f"/shipments/{shipment_id}",
        json={"status": "out_for_delivery"},
        headers={**partner, "If-Match": '"1"'},
    )
    assert_problem(stale, 412, "version_mismatch")
    assert await templates() == ["shipment_created"]

    out = await patch_shipment(client, partner, shipment_id, status="out_for_delivery")
    assert out.status_code == 200, out.text
    code = await delivery_code(db_engine, shipment_id)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    # A wrong code is refused (the try is counted and committed), yet nothing is delivered.
    refused = await patch_shipment(
        client, partner, shipment_id, status="delivered", verification_code=wrong
    )
    assert_problem(refused, 422, "invalid_verification_code")
    assert await templates() == ["shipment_created", "delivery_code"]

    await drain(make_worker(email_from=EMAIL_FROM))
    mails = smtp_server.received_by(recipient_of(shipment))
    assert len(mails) == 2
    assert not any("delivered" in mail.subject for mail in mails)


async def test_a_refused_step_after_cancelling_sends_no_code(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    await bring_to(track_app.client, db_engine, parties, shipment["id"], "cancelled")
    refused = await patch_shipment(
        track_app.client, parties.partner_headers, shipment["id"], status="out_for_delivery"
    )
    assert_problem(refused, 409, "invalid_transition")

    await drain(make_worker(email_from=EMAIL_FROM))
    templates = [row.payload["template"] for row in await outbox_rows(db_engine, shipment["id"])]
    assert "delivery_code" not in templates
    assert not any(
        "delivery code" in mail.subject for mail in smtp_server.received_by(recipient_of(shipment))
    )


async def test_a_replayed_create_sends_one_email(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties = await make_parties(track_app.client)
    body = shipment_body()
    headers = {**parties.seller_headers, "Idempotency-Key": "order-1042-attempt"}
    first = await track_app.client.post("/shipments", json=body, headers=headers)
    again = await track_app.client.post("/shipments", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert again.status_code == 201, again.text
    assert again.json()["id"] == first.json()["id"]

    await drain(make_worker(email_from=EMAIL_FROM))
    assert len(await rows_to(db_engine, body["recipient"]["email"])) == 1
    only_mail(smtp_server, first.json(), "on its way")


async def test_simultaneous_creates_beyond_capacity_email_only_the_assigned(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties = await make_parties(track_app.client, max_handling_capacity=3)
    bodies = [shipment_body() for _ in range(10)]
    responses = await asyncio.gather(
        *(
            track_app.client.post("/shipments", json=body, headers=parties.seller_headers)
            for body in bodies
        )
    )
    created = [response.json() for response in responses if response.status_code == 201]
    assert len(created) == 3
    for response in responses:
        if response.status_code != 201:
            assert_problem(response, 409, "no_partner_available")

    await drain(make_worker(email_from=EMAIL_FROM))
    created_recipients = {recipient_of(shipment) for shipment in created}
    for body in bodies:
        address = body["recipient"]["email"]
        expected = 1 if address in created_recipients else 0
        assert len(await rows_to(db_engine, address)) == expected
        assert len(smtp_server.received_by(address)) == expected


async def test_a_second_trip_out_sends_a_fresh_code_and_only_it_delivers(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    shipment_id = shipment["id"]
    client, partner = track_app.client, parties.partner_headers
    worker = make_worker(email_from=EMAIL_FROM)

    async def code_from_newest_email() -> str:
        await drain(worker)
        mails = [
            mail
            for mail in smtp_server.received_by(recipient_of(shipment))
            if "delivery code" in mail.subject
        ]
        found: set[str] = set(SIX_DIGITS.findall(mails[-1].part("plain")))
        assert len(found) == 1
        return found.pop()

    await bring_to(client, db_engine, parties, shipment_id, "out_for_delivery")
    first_code = await code_from_newest_email()
    # A failed attempt: back in transit, then out again with a new code.
    await try_again_after_a_failed_attempt(client, partner, shipment_id)
    second_code = await code_from_newest_email()
    codes = [
        mail
        for mail in smtp_server.received_by(recipient_of(shipment))
        if "delivery code" in mail.subject
    ]
    assert len(codes) == 2
    assert codes[0].message_id != codes[1].message_id

    if first_code != second_code:  # one chance in a million that they coincide
        stale = await patch_shipment(
            client, partner, shipment_id, status="delivered", verification_code=first_code
        )
        assert_problem(stale, 422, "invalid_verification_code")
    delivered = await patch_shipment(
        client, partner, shipment_id, status="delivered", verification_code=second_code
    )
    assert delivered.status_code == 200, delivered.text


# --- every other change that matters to the recipient (§12.5) -------------------------------

# What a partner may write in a note: never for the recipient's eyes.
PARTNER_NOTE = "Neighbour Alice Smith at no. 12 says they moved; call her on 555-0100"


def parts(mail: ReceivedMail) -> tuple[str, str]:
    return mail.part("plain"), mail.part("html")


def assert_links_to_tracking(mail: ReceivedMail, shipment: dict[str, Any]) -> None:
    link = f"{PUBLIC_BASE_URL}/t/{shipment['tracking_number']}"
    plain, html = parts(mail)
    assert link in plain
    assert f'href="{link}"' in html


def assert_nobody_elses_data(mail: ReceivedMail, parties: Parties, *more: str) -> None:
    """Neither the seller's nor the partner's contacts or address, nor the partner's note (nor
    anything in `more`), in the subject or either part."""
    others = [
        parties.seller["email"],
        parties.seller["address"],
        parties.partner["email"],
        "Alice Smith",
        "555-0100",
        *more,
    ]
    for text_ in (mail.subject, *parts(mail)):
        for other in others:
            assert other not in text_, other
        assert "None" not in text_


async def test_a_cancelled_shipment_tells_its_recipient_who_cancelled_it(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    # Another of the seller's recipients, whose data must stay out of this one's email.
    other = await create_shipment(
        track_app.client,
        parties.seller_headers,
        recipient={"name": "Ada Lovelace", "email": "ada@example.com"},
    )
    await bring_to(track_app.client, db_engine, parties, shipment["id"], "cancelled")

    await drain(make_worker(email_from=EMAIL_FROM))

    assert len(smtp_server.received_by(recipient_of(shipment))) == 2  # created, cancelled
    mail = only_mail(smtp_server, shipment, "was cancelled")
    assert_links_to_tracking(mail, shipment)
    for part in parts(mail):
        assert "Grace Hopper" in part
        assert parties.seller["name"] in part
        assert "2 paperback books" in part
        assert "will not be delivered" in part
    assert_nobody_elses_data(mail, parties, "Ada Lovelace", recipient_of(other))
    await assert_all_sent(db_engine, shipment, 2)
    # The other shipment's recipient heard only of their own parcel.
    [theirs] = smtp_server.received_by(recipient_of(other))
    assert "on its way" in theirs.subject


async def test_a_shipment_the_sweep_cancels_is_announced_in_its_sellers_name(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    await age_shipment(db_engine, shipment["id"], 72.1)
    settings = track_app.settings
    assert settings.redis_url is not None
    redis = create_redis(settings, settings.redis_url, max_connections=2)
    try:
        assert await PlacedExpiry(settings, track_app.sessionmaker, redis).sweep() == 1
    finally:
        await redis.aclose()

    await drain(make_worker(email_from=EMAIL_FROM))

    mail = only_mail(smtp_server, shipment, "was cancelled")
    assert_links_to_tracking(mail, shipment)
    for part in parts(mail):
        assert parties.seller["name"] in part
        assert "Speedy Couriers" not in part
        # The timeline's line is the seller's business, not the recipient's.
        assert expiry_note(72) not in part
    assert_nobody_elses_data(mail, parties)


async def test_a_returned_parcel_is_announced_without_the_partners_note(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    await bring_to(track_app.client, db_engine, parties, shipment["id"], "in_transit")
    returned = await patch_shipment(
        track_app.client,
        parties.partner_headers,
        shipment["id"],
        status="returned",
        note=PARTNER_NOTE,
    )
    assert returned.status_code == 200, returned.text
    assert returned.json()["timeline"][-1]["description"] == PARTNER_NOTE

    await drain(make_worker(email_from=EMAIL_FROM))

    assert len(smtp_server.received_by(recipient_of(shipment))) == 2  # created, returned
    mail = only_mail(smtp_server, shipment, "going back to the sender")
    assert_links_to_tracking(mail, shipment)
    for part in parts(mail):
        assert "Grace Hopper" in part
        assert "2 paperback books" in part
        assert "going back to the sender." in part
        # No reason or count is known to this path yet: none is made up.
        assert "attempt" not in part
    assert_nobody_elses_data(mail, parties)
    await assert_all_sent(db_engine, shipment, 2)


def eta_of(shipment: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(shipment["estimated_delivery"])


def two_days_later(eta: datetime) -> datetime:
    return eta + timedelta(days=2)


def a_day_earlier(eta: datetime) -> datetime:
    return eta - timedelta(days=1)


def exactly_a_day_later(eta: datetime) -> datetime:
    return eta + timedelta(days=1)


def hours_later(eta: datetime) -> datetime:
    """Later by most of a day, but not by a day: not news (whatever the calendar says)."""
    return eta + timedelta(hours=23, minutes=59)


@pytest.mark.parametrize(
    ("move", "direction"),
    [(two_days_later, "later"), (a_day_earlier, "earlier"), (exactly_a_day_later, "later")],
)
async def test_a_new_delivery_day_is_announced(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
    move: Callable[[datetime], datetime],
    direction: str,
) -> None:
    parties, shipment = await new_shipment(track_app)
    in_transit = await bring_to(track_app.client, db_engine, parties, shipment["id"], "in_transit")
    previous = eta_of(in_transit)
    new_eta = move(previous)
    response = await patch_shipment(
        track_app.client,
        parties.partner_headers,
        shipment["id"],
        estimated_delivery=new_eta.isoformat(),
        note=PARTNER_NOTE,
    )
    assert response.status_code == 200, response.text
    assert eta_of(response.json()) == new_eta

    await drain(make_worker(email_from=EMAIL_FROM))

    assert len(smtp_server.received_by(recipient_of(shipment))) == 2  # created, new day
    mail = only_mail(smtp_server, shipment, "is now expected")
    assert human_day(new_eta) in mail.subject
    assert_links_to_tracking(mail, shipment)
    for part in parts(mail):
        assert "Grace Hopper" in part
        assert f"moved {direction}" in part
        assert human_day(previous) in part
        assert human_day(new_eta) in part
    assert_nobody_elses_data(mail, parties)
    await assert_all_sent(db_engine, shipment, 2)


async def test_an_estimate_moved_by_less_than_a_day_sends_nothing(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    new_eta = hours_later(eta_of(shipment))
    response = await patch_shipment(
        track_app.client,
        parties.partner_headers,
        shipment["id"],
        status="in_transit",
        estimated_delivery=new_eta.isoformat(),
    )
    assert response.status_code == 200, response.text
    assert eta_of(response.json()) == new_eta

    await drain(make_worker(email_from=EMAIL_FROM))
    templates = [row.payload["template"] for row in await outbox_rows(db_engine, shipment["id"])]
    assert [template for template in templates if template != "shipment_created"] == []
    assert len(smtp_server.received_by(recipient_of(shipment))) == 1


async def test_refused_cancels_returns_and_new_estimates_send_nothing(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    shipment_id = shipment["id"]
    client, partner = track_app.client, parties.partner_headers
    later = (eta_of(shipment) + timedelta(days=2)).isoformat()

    # A placed shipment cannot be returned.
    assert_problem(
        await patch_shipment(client, partner, shipment_id, status="returned"),
        409,
        "invalid_transition",
    )
    await bring_to(client, db_engine, parties, shipment_id, "in_transit")
    # Once it is in transit, the seller cannot cancel it.
    cancel = await client.post(f"/shipments/{shipment_id}/cancel", headers=parties.seller_headers)
    assert_problem(cancel, 409, "invalid_transition")
    # A new estimate on a stale version is refused.
    stale = await client.patch(
        f"/shipments/{shipment_id}",
        json={"estimated_delivery": later},
        headers={**partner, "If-Match": '"1"'},
    )
    assert_problem(stale, 412, "version_mismatch")
    # So is one on a delivered shipment, or one that comes with a wrong delivery code.
    await bring_to(client, db_engine, parties, shipment_id, "out_for_delivery")
    code = await delivery_code(db_engine, shipment_id)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    refused = await patch_shipment(
        client,
        partner,
        shipment_id,
        status="delivered",
        verification_code=wrong,
        estimated_delivery=later,
    )
    assert_problem(refused, 422, "invalid_verification_code")
    delivered = await patch_shipment(
        client, partner, shipment_id, status="delivered", verification_code=code
    )
    assert delivered.status_code == 200, delivered.text
    after = await patch_shipment(client, partner, shipment_id, estimated_delivery=later)
    assert_problem(after, 409, "invalid_transition")
    returned = await patch_shipment(client, partner, shipment_id, status="returned")
    assert_problem(returned, 409, "invalid_transition")

    await drain(make_worker(email_from=EMAIL_FROM))
    templates = [row.payload["template"] for row in await outbox_rows(db_engine, shipment_id)]
    assert templates == ["shipment_created", "delivery_code", "delivered"]
    subjects = [mail.subject for mail in smtp_server.received_by(recipient_of(shipment))]
    assert len(subjects) == 3
    for word in ("cancelled", "going back", "now expected"):
        assert not any(word in subject for subject in subjects)


# --- not yet sent by any API change: queued on a stored shipment ----------------------------


async def queue_for(
    track_app: TrackApp,
    shipment: dict[str, Any],
    queue: Callable[[RecipientEmails, Shipment], None],
) -> None:
    """Run `queue` on the stored shipment in a committed unit of work, as a service would."""
    settings = track_app.settings
    async with unit_of_work(track_app.sessionmaker) as unit:
        stored = await unit.session.get(Shipment, uuid.UUID(shipment["id"]))
        assert stored is not None
        emails = RecipientEmails(
            unit.session,
            links=LinkTokens(settings),
            public_base_url=settings.public_base_url,
            review_link_ttl_seconds=settings.review_link_ttl_seconds,
        )
        queue(emails, stored)


@pytest.mark.parametrize(
    ("reason", "attempts", "attempts_left", "what_next"),
    [
        (FailureReason.recipient_unavailable, 1, 2, "next working day (2 attempts left)"),
        (FailureReason.weather, 2, 1, "next working day (1 attempt left)"),
        (FailureReason.access_restricted, 3, 0, "will go back to the sender"),
        (FailureReason.other, 1, 2, "next working day (2 attempts left)"),
    ],
)
async def test_a_failed_attempt_says_what_happened_and_what_comes_next(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
    reason: FailureReason,
    attempts: int,
    attempts_left: int,
    what_next: str,
) -> None:
    parties, shipment = await new_shipment(track_app)
    await bring_to(track_app.client, db_engine, parties, shipment["id"], "out_for_delivery")
    await queue_for(
        track_app,
        shipment,
        lambda emails, stored: emails.failed_attempt(
            stored, reason=reason, attempts=attempts, attempts_left=attempts_left
        ),
    )

    await drain(make_worker(email_from=EMAIL_FROM))

    mail = only_mail(smtp_server, shipment, "could not deliver")
    assert_links_to_tracking(mail, shipment)
    counted = f"{attempts} failed attempt{'s' if attempts > 1 else ''} so far"
    for part in parts(mail):
        assert "Grace Hopper" in part
        assert "2 paperback books" in part
        assert FAILURE_WORDS[reason] in part
        assert counted in part
        assert what_next in part
    assert_nobody_elses_data(mail, parties)
    await assert_all_sent(db_engine, shipment, 3)  # created, delivery code, failed attempt


async def test_a_returned_parcel_tells_the_last_reason_and_the_attempts(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    await queue_for(
        track_app,
        shipment,
        lambda emails, stored: emails.returned(stored, reason=FailureReason.refused, attempts=2),
    )

    await drain(make_worker(email_from=EMAIL_FROM))

    mail = only_mail(smtp_server, shipment, "going back to the sender")
    assert_links_to_tracking(mail, shipment)
    for part in parts(mail):
        assert "going back to the sender after 2 delivery attempts." in part
        assert FAILURE_WORDS[FailureReason.refused] in part
    assert_nobody_elses_data(mail, parties)


async def test_corrected_details_go_to_the_recipient_as_now_stored(
    track_app: TrackApp,
    db_engine: AsyncEngine,
    smtp_server: SmtpServer,
    make_worker: WorkerFactory,
) -> None:
    parties, shipment = await new_shipment(track_app)
    old_address = recipient_of(shipment)

    def correct_and_queue(emails: RecipientEmails, stored: Shipment) -> None:
        # What a correction stores (§12.3), then its email.
        stored.recipient_name = "Grace B. Hopper"
        stored.recipient_email = "grace.hopper@example.org"
        stored.destination_address_line = "1 Navy Yard"
        stored.destination_city = None
        emails.details_corrected(stored, not_before=None)

    await queue_for(track_app, shipment, correct_and_queue)
    corrected = {
        **shipment,
        "recipient": {**shipment["recipient"], "email": "grace.hopper@example.org"},
    }

    await drain(make_worker(email_from=EMAIL_FROM))

    mail = only_mail(smtp_server, corrected, "details updated")
    assert [mail.subject for mail in smtp_server.received_by(old_address)] == [
        f"Your parcel {shipment['tracking_number']} is on its way"
    ]
    assert_links_to_tracking(mail, shipment)
    for part in parts(mail):
        assert "Grace B. Hopper" in part
        assert "1 Navy Yard" in part
        assert "02139" in part
        assert "77 Massachusetts Ave" not in part
        assert "Cambridge" not in part
    assert_nobody_elses_data(mail, parties, old_address)
