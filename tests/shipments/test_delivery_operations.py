"""A delivery network's day (product.md §12.1 to §12.3): failed attempts with reasons and the way
back to the sender, events recorded late with the time and place they happened, batches of
scans, and the seller's corrections of the delivery details.

What each test checks is what the seller, the partner or the recipient would see: the API's
views, the public tracking view, the seller's feed and the recipient's queued emails.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.assertions import assert_problem
from tests.factories import account_with_token
from tests.outbox.conftest import outbox_rows
from tests.shipments.factories import (
    DESTINATION_ZIP,
    Parties,
    active_shipments,
    as_public,
    bring_to,
    create_shipment,
    get_shipment,
    make_parties,
    patch_shipment,
)

OTHER_ZIP = "94105"
# Upper bound for waiting on the seller's feed (a guard, never a measurement).
FEED_WAIT_SECONDS = 5.0


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def fail_attempt(
    client: httpx.AsyncClient, parties: Parties, shipment_id: str, reason: str, **extra: Any
) -> httpx.Response:
    return await patch_shipment(
        client,
        parties.partner_headers,
        shipment_id,
        status="in_transit",
        failure_reason=reason,
        **extra,
    )


async def out_for_delivery(
    client: httpx.AsyncClient, db_engine: AsyncEngine, parties: Parties
) -> dict[str, Any]:
    shipment = await create_shipment(client, parties.seller_headers)
    return await bring_to(client, db_engine, parties, shipment["id"], "out_for_delivery")


async def recipient_templates(db_engine: AsyncEngine, shipment_id: str) -> list[str]:
    """The templates of the emails queued for the shipment's recipient, oldest first."""
    return [str(row.payload["template"]) for row in await outbox_rows(db_engine, shipment_id)]


async def feed_for(
    client: httpx.AsyncClient, headers: dict[str, str], shipment_id: str, count: int
) -> list[dict[str, Any]]:
    """The shipment's events in the seller's feed, once `count` of them are visible."""
    async with asyncio.timeout(FEED_WAIT_SECONDS):
        while True:
            response = await client.get("/events", headers=headers, params={"limit": 100})
            assert response.status_code == 200, response.text
            items = [e for e in response.json()["items"] if e["shipment_id"] == shipment_id]
            if len(items) >= count:
                return items
            await asyncio.sleep(0.05)


async def track(client: httpx.AsyncClient, shipment: dict[str, Any]) -> dict[str, Any]:
    response = await client.get(f"/track/{shipment['tracking_number']}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


# --- failed attempts (§12.1) ----------------------------------------------------------------


async def test_a_failed_attempt_goes_back_in_transit_with_its_reason(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await out_for_delivery(client, db_engine, parties)
    note = "Mrs Lovelace next door would not take it"

    response = await fail_attempt(
        client, parties, shipment["id"], "recipient_unavailable", note=note
    )

    assert response.status_code == 200, response.text
    failed = response.json()
    assert (failed["status"], failed["attempts"], failed["version"]) == (
        "in_transit",
        1,
        shipment["version"] + 1,
    )
    event = failed["timeline"][-1]
    assert event["failure_reason"] == "recipient_unavailable"
    assert event["description"] == "Nobody was available to receive the parcel"
    assert event["note"] == note  # the seller and the partner see the partner's note
    assert await get_shipment(client, parties.partner_headers, shipment["id"]) == failed

    public = await track(client, shipment)
    assert public["timeline"][-1]["description"] == "Nobody was available to receive the parcel"
    assert public["timeline"][-1]["failure_reason"] == "recipient_unavailable"
    assert "note" not in public["timeline"][-1]
    assert "Lovelace" not in (await client.get(f"/t/{shipment['tracking_number']}")).text

    templates = await recipient_templates(db_engine, shipment["id"])
    assert templates[-1] == "failed_attempt"
    feed = await feed_for(client, parties.seller_headers, shipment["id"], 4)
    newest = feed[-1]["data"]
    assert newest["changes"] == {
        "status": "in_transit",
        "failure_reason": "recipient_unavailable",
        "attempts": 1,
    }
    assert newest["timeline_event"]["failure_reason"] == "recipient_unavailable"


async def test_the_last_allowed_attempt_returns_the_shipment_by_itself(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await out_for_delivery(client, db_engine, parties)
    sid = shipment["id"]
    assert await active_shipments(client, parties.partner_headers) == 1
    for reason in ("recipient_unavailable", "business_closed"):
        assert (await fail_attempt(client, parties, sid, reason)).status_code == 200
        again = await patch_shipment(
            client, parties.partner_headers, sid, status="out_for_delivery"
        )
        assert again.status_code == 200, again.text

    response = await fail_attempt(client, parties, sid, "access_restricted")

    assert response.status_code == 200, response.text
    returned = response.json()
    assert (returned["status"], returned["attempts"]) == ("returned", 3)
    failed_event, return_event = returned["timeline"][-2:]
    assert (failed_event["status"], failed_event["failure_reason"]) == (
        "in_transit",
        "access_restricted",
    )
    assert return_event["status"] == "returned"
    assert return_event["description"] == "Returned to the sender after 3 failed delivery attempts"
    assert return_event["sequence"] == failed_event["sequence"] + 1
    assert returned["version"] == shipment["version"] + 6
    # The slot is free, the recipient hears about the return (not another attempt).
    assert await active_shipments(client, parties.partner_headers) == 0
    templates = await recipient_templates(db_engine, sid)
    assert templates.count("failed_attempt") == 2
    assert templates[-1] == "returned"
    feed = await feed_for(client, parties.seller_headers, sid, 9)
    assert [item["data"]["status"] for item in feed[-2:]] == ["in_transit", "returned"]
    assert [item["data"]["version"] for item in feed[-2:]] == [
        returned["version"] - 1,
        returned["version"],
    ]
    # Final: no more attempts.
    refused = await fail_attempt(client, parties, sid, "weather")
    assert_problem(refused, 409, "invalid_transition")


async def test_refused_and_unknown_address_may_return_at_once(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    for reason, words in (
        ("refused", "The parcel was refused at the door: returned to the sender"),
        ("address_not_found", "The courier could not find the address: returned to the sender"),
    ):
        shipment = await out_for_delivery(client, db_engine, parties)
        response = await patch_shipment(
            client,
            parties.partner_headers,
            shipment["id"],
            status="returned",
            failure_reason=reason,
        )
        assert response.status_code == 200, response.text
        returned = response.json()
        assert (returned["status"], returned["attempts"]) == ("returned", 1)
        assert returned["timeline"][-1]["description"] == words
        assert (await recipient_templates(db_engine, shipment["id"]))[-1] == "returned"

    shipment = await out_for_delivery(client, db_engine, parties)
    before = await get_shipment(client, parties.seller_headers, shipment["id"])
    response = await patch_shipment(
        client,
        parties.partner_headers,
        shipment["id"],
        status="returned",
        failure_reason="recipient_unavailable",
    )
    assert_problem(response, 422, "failure_reason_not_allowed")
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == before


async def test_a_failed_attempt_needs_a_reason_and_other_needs_a_note(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await out_for_delivery(client, db_engine, parties)
    before = await get_shipment(client, parties.seller_headers, shipment["id"])

    bare = await patch_shipment(
        client, parties.partner_headers, shipment["id"], status="in_transit"
    )
    assert_problem(bare, 422, "failure_reason_required")
    other = await fail_attempt(client, parties, shipment["id"], "other")
    assert_problem(other, 422, "validation_failed")
    unknown = await fail_attempt(client, parties, shipment["id"], "dog_ate_it")
    assert_problem(unknown, 422, "validation_failed")
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == before

    explained = await fail_attempt(
        client, parties, shipment["id"], "other", note="Road closed by a parade"
    )
    assert explained.status_code == 200, explained.text
    assert explained.json()["timeline"][-1]["description"] == (
        "The delivery could not be completed"
    )


# --- when and where (§12.2) -----------------------------------------------------------------


async def test_events_are_shown_in_the_order_they_happened(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    sid = shipment["id"]
    created_at = parse(shipment["created_at"])
    hub = {"zip_code": "02110", "city": "Boston", "lat": 42.3555, "lon": -71.0565}
    # Room between the creation and now for two events that happened in between.
    await asyncio.sleep(0.3)

    first = await patch_shipment(
        client,
        parties.partner_headers,
        sid,
        status="in_transit",
        occurred_at=iso(created_at + timedelta(milliseconds=200)),
    )
    assert first.status_code == 200, first.text
    # A scan made before that report, uploaded after it (a van without signal).
    late = await patch_shipment(
        client,
        parties.partner_headers,
        sid,
        location=hub,
        occurred_at=iso(created_at + timedelta(milliseconds=100)),
    )

    assert late.status_code == 200, late.text
    timeline = late.json()["timeline"]
    assert [event["sequence"] for event in timeline] == [1, 3, 2]
    assert [parse(event["occurred_at"]) for event in timeline] == sorted(
        parse(event["occurred_at"]) for event in timeline
    )
    scan = timeline[1]
    # The scan happened while the shipment was still placed; the status is still the last one
    # reported, never re-derived from the order.
    assert (scan["status"], scan["description"], scan["location"]) == (
        "placed",
        "Location update",
        hub,
    )
    assert scan["location_zip"] == "02110"
    assert parse(scan["created_at"]) > parse(timeline[2]["created_at"])
    assert late.json()["status"] == "in_transit"

    public = await track(client, shipment)
    assert [event["sequence"] for event in public["timeline"]] == [1, 3, 2]
    assert public["timeline"][1]["location"] == {**hub, "lat": None, "lon": None}
    assert public["timeline"] == as_public(timeline)


async def test_an_event_without_a_time_happened_when_it_was_recorded(
    client: httpx.AsyncClient,
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    assert shipment["timeline"][0]["occurred_at"] == shipment["timeline"][0]["created_at"]

    response = await patch_shipment(
        client, parties.partner_headers, shipment["id"], status="in_transit", location_zip="10001"
    )

    event = response.json()["timeline"][-1]
    assert event["occurred_at"] == event["created_at"]
    assert event["location"] == {"zip_code": "10001", "city": None, "lat": None, "lon": None}


async def test_implausible_event_times_are_refused(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    sid = shipment["id"]
    now = datetime.now(UTC)
    created_at = parse(shipment["created_at"])
    for moment, kind in (
        (now + timedelta(minutes=10), "future"),
        (now - timedelta(hours=73), "too_old"),
        (created_at - timedelta(seconds=5), "before_creation"),
    ):
        response = await patch_shipment(
            client, parties.partner_headers, sid, status="in_transit", occurred_at=iso(moment)
        )
        problem = assert_problem(response, 422, "invalid_occurred_at")
        assert problem["occurred_at"] == kind
    assert await get_shipment(client, parties.seller_headers, sid) == shipment

    # A device clock a minute fast is within the skew: recorded as now.
    response = await patch_shipment(
        client,
        parties.partner_headers,
        sid,
        status="in_transit",
        occurred_at=iso(datetime.now(UTC) + timedelta(minutes=1)),
    )
    assert response.status_code == 200, response.text
    event = response.json()["timeline"][-1]
    assert parse(event["occurred_at"]) <= parse(event["created_at"])


# --- batches of scans (§12.2) ---------------------------------------------------------------


def scan(shipment: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "scan_id": f"van-{uuid.uuid4().hex[:12]}",
        "tracking_number": shipment["tracking_number"],
        **fields,
    }


async def post_scans(
    client: httpx.AsyncClient, headers: dict[str, str], scans: list[dict[str, Any]]
) -> httpx.Response:
    return await client.post("/scans", json={"scans": scans}, headers=headers)


async def test_a_batch_records_each_scan_and_answers_for_each(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    others = await make_parties(client, serviceable_zip_codes=[OTHER_ZIP])
    mine = [await create_shipment(client, parties.seller_headers) for _ in range(2)]
    theirs = await create_shipment(
        client, others.seller_headers, destination={"zip_code": OTHER_ZIP}
    )
    now = datetime.now(UTC)
    scans = [
        scan(mine[0], status="in_transit", location={"city": "Newark"}),
        scan(mine[1], status="in_transit", location={"zip_code": "07001"}),
        scan(theirs, status="in_transit"),
        scan(mine[0], status="out_for_delivery", location={"lat": 40.7, "lon": -74.0}),
        scan(mine[1], status="in_transit", occurred_at=iso(now - timedelta(hours=80))),
        scan(mine[1], status="delivered", verification_code="123456"),
    ]

    response = await post_scans(client, parties.partner_headers, scans)

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["scan_id"] for result in results] == [s["scan_id"] for s in scans]
    assert [result["result"] for result in results] == [
        "accepted",
        "accepted",
        "rejected",
        "accepted",
        "rejected",
        "rejected",
    ]
    assert [result["sequence"] for result in results] == [2, 2, None, 3, None, None]
    assert results[2]["problem"]["code"] == "shipment_not_found"
    assert results[2]["problem"]["status"] == 404
    assert results[4]["problem"]["code"] == "invalid_occurred_at"
    assert results[5]["problem"]["code"] == "invalid_transition"
    first = await get_shipment(client, parties.seller_headers, mine[0]["id"])
    assert first["status"] == "out_for_delivery"
    assert [event["status"] for event in first["timeline"]] == [
        "placed",
        "in_transit",
        "out_for_delivery",
    ]
    assert first["timeline"][1]["location"]["city"] == "Newark"
    second = await get_shipment(client, parties.seller_headers, mine[1]["id"])
    assert (second["status"], len(second["timeline"])) == ("in_transit", 2)
    assert await get_shipment(client, others.seller_headers, theirs["id"]) == theirs
    # Going out for delivery by scan emails the code, as a single report does.
    assert (await recipient_templates(db_engine, mine[0]["id"]))[-1] == "delivery_code"


async def test_a_batch_sent_again_records_nothing_twice(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    scans = [
        scan(shipment, status="in_transit", location={"zip_code": "07001"}),
        scan(shipment, location={"zip_code": "07002"}),
    ]
    first = await post_scans(client, parties.partner_headers, scans)
    assert [r["result"] for r in first.json()["results"]] == ["accepted", "accepted"]
    recorded = await get_shipment(client, parties.seller_headers, shipment["id"])

    again = await post_scans(client, parties.partner_headers, scans)

    assert again.status_code == 200, again.text
    assert [(r["result"], r["sequence"]) for r in again.json()["results"]] == [
        ("duplicate", 2),
        ("duplicate", 3),
    ]
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == recorded


async def test_scans_are_for_partners_and_a_batch_is_bounded(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    seller = await post_scans(client, parties.seller_headers, [scan(shipment, note="x")])
    assert_problem(seller, 403, "wrong_account_kind")
    too_many = [scan(shipment, note=f"scan {n}") for n in range(101)]
    too_big = await post_scans(client, parties.partner_headers, too_many)
    assert_problem(too_big, 422, "validation_failed")
    empty = await post_scans(client, parties.partner_headers, [])
    assert_problem(empty, 422, "validation_failed")
    assert await get_shipment(client, parties.seller_headers, shipment["id"]) == shipment
    hundred = [scan(shipment, note=f"scan {n}") for n in range(100)]
    response = await post_scans(client, parties.partner_headers, hundred)
    assert response.status_code == 200, response.text
    assert {r["result"] for r in response.json()["results"]} == {"accepted"}


# --- corrections (§12.3) --------------------------------------------------------------------


async def correct(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    shipment_id: str,
    body: dict[str, Any],
    **header_values: str,
) -> httpx.Response:
    return await client.patch(
        f"/shipments/{shipment_id}/delivery-details",
        json=body,
        headers={**headers, **header_values},
    )


async def test_a_seller_corrects_the_recipient_and_the_address(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    new_email = f"grace.hopper-{uuid.uuid4().hex[:8]}@example.com"
    body = {
        "recipient": {"email": new_email, "phone": "+1 617 555 0199"},
        "destination": {"address_line": "78 Massachusetts Ave"},
    }

    stale = await correct(client, parties.seller_headers, shipment["id"], body, **{"If-Match": "0"})
    assert_problem(stale, 412, "version_mismatch")
    response = await correct(
        client, parties.seller_headers, shipment["id"], body, **{"If-Match": '"1"'}
    )

    assert response.status_code == 200, response.text
    corrected = response.json()
    assert corrected["version"] == 2
    assert response.headers["etag"] == '"2"'
    assert corrected["recipient"] == {
        "name": "Grace Hopper",
        "email": new_email,
        "phone": "+1 617 555 0199",
    }
    assert corrected["destination"]["address_line"] == "78 Massachusetts Ave"
    assert corrected["partner"] == shipment["partner"]
    assert (corrected["timeline"][-1]["status"], corrected["timeline"][-1]["description"]) == (
        "placed",
        "Delivery details updated",
    )
    public = (await client.get(f"/t/{shipment['tracking_number']}")).text
    assert "Delivery details updated" in public
    assert "78 Massachusetts" not in public
    rows = await outbox_rows(db_engine, shipment["id"])
    assert (rows[-1].payload["template"], rows[-1].payload["to"]) == (
        "details_corrected",
        new_email,
    )
    feed = await feed_for(client, parties.seller_headers, shipment["id"], 2)
    assert set(feed[-1]["data"]["changes"]) == {"recipient", "destination"}

    # Sending the same values again changes nothing and records nothing.
    same = await correct(client, parties.seller_headers, shipment["id"], body)
    assert same.json() == corrected


async def test_a_new_zip_moves_the_shipment_to_a_partner_that_serves_it(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    _, other_headers = await account_with_token(
        client, "partner", serviceable_zip_codes=[OTHER_ZIP], max_handling_capacity=1
    )
    shipment = await create_shipment(client, parties.seller_headers, tags=["gift"])
    shipment = await bring_to(client, db_engine, parties, shipment["id"], "in_transit")
    assert await active_shipments(client, parties.partner_headers) == 1

    response = await correct(
        client, parties.seller_headers, shipment["id"], {"destination": {"zip_code": OTHER_ZIP}}
    )

    assert response.status_code == 200, response.text
    moved = response.json()
    assert moved["destination"]["zip_code"] == OTHER_ZIP
    assert moved["partner"]["id"] != shipment["partner"]["id"]
    assert await active_shipments(client, parties.partner_headers) == 0
    assert await active_shipments(client, other_headers) == 1
    # The new partner carries it (its tag filter too); the old one no longer sees it.
    tagged = await client.get("/shipments", params={"tag": "gift"}, headers=other_headers)
    assert [item["id"] for item in tagged.json()["items"]] == [shipment["id"]]
    old = await client.get(f"/shipments/{shipment['id']}", headers=parties.partner_headers)
    assert_problem(old, 404, "shipment_not_found")
    feed = await feed_for(client, parties.seller_headers, shipment["id"], 3)
    assert feed[-1]["data"]["changes"]["partner"] == moved["partner"]

    # The new partner is now full: moving another shipment there is refused, nothing changes.
    second = await create_shipment(client, parties.seller_headers)
    full = await correct(
        client, parties.seller_headers, second["id"], {"destination": {"zip_code": OTHER_ZIP}}
    )
    assert_problem(full, 409, "no_partner_available")
    assert full.json()["reason"] == "partners_full"
    assert await get_shipment(client, parties.seller_headers, second["id"]) == second
    unserved = await correct(
        client, parties.seller_headers, second["id"], {"destination": {"zip_code": "99950"}}
    )
    assert_problem(unserved, 409, "no_partner_available")
    assert unserved.json()["reason"] == "zip_not_served"
    assert await get_shipment(client, parties.seller_headers, second["id"]) == second
    assert await active_shipments(client, parties.partner_headers) == 1


async def test_a_new_zip_the_partner_serves_keeps_the_partner(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client, serviceable_zip_codes=[DESTINATION_ZIP, "02140"])
    shipment = await create_shipment(client, parties.seller_headers)

    response = await correct(
        client, parties.seller_headers, shipment["id"], {"destination": {"zip_code": "02140"}}
    )

    assert response.status_code == 200, response.text
    assert response.json()["partner"] == shipment["partner"]
    assert await active_shipments(client, parties.partner_headers) == 1


async def test_details_are_locked_once_out_for_delivery(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    for status in ("out_for_delivery", "delivered", "cancelled"):
        shipment = await create_shipment(client, parties.seller_headers)
        shipment = await bring_to(client, db_engine, parties, shipment["id"], status)
        response = await correct(
            client, parties.seller_headers, shipment["id"], {"recipient": {"name": "Ada"}}
        )
        problem = assert_problem(response, 409, "delivery_details_locked")
        assert problem["current_status"] == status
        assert await get_shipment(client, parties.seller_headers, shipment["id"]) == shipment
    partner = await correct(
        client, parties.partner_headers, shipment["id"], {"recipient": {"name": "Ada"}}
    )
    assert_problem(partner, 403, "wrong_account_kind")
