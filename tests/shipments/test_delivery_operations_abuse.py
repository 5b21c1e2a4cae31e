"""Hostile input against the delivery operations' writes (product.md §12.1 to §12.3): failed
attempts, event times and places, batches of scans, and the seller's corrections.

Every refusal is a 4xx problem+json (never a 500: product.md §3) and stores NOTHING: each test
compares everything a write could touch (the shipment's row, its events, its emails and webhook
messages, its feed events, the partners' counters) before and after.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.main import create_app
from tests.assertions import assert_problem
from tests.conftest import make_settings, running_client
from tests.factories import account_with_token, api_key_headers
from tests.outbox.conftest import database_now, outbox_rows
from tests.shipments.factories import (
    Parties,
    bring_to,
    create_shipment,
    make_parties,
)

UNSERVED_ZIP = "99950"
OTHER_PARTNERS_ZIP = "60601"
VALIDATION = "validation_failed"


# --- what is stored ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    """Everything a write to one shipment could change."""

    shipment: dict[str, Any]
    events: list[dict[str, Any]]
    messages: int  # outbox rows: recipient emails and webhook deliveries
    feed: int  # the seller's feed events
    counters: dict[str, int]  # every partner's active_shipments


async def stored(db_engine: AsyncEngine, shipment_id: str) -> Stored:
    key = {"id": uuid.UUID(shipment_id)}
    async with db_engine.connect() as connection:
        shipment = dict(
            (await connection.execute(text("SELECT * FROM shipments WHERE id = :id"), key))
            .mappings()
            .one()
        )
        events = [
            dict(row)
            for row in (
                await connection.execute(
                    text("SELECT * FROM shipment_events WHERE shipment_id = :id ORDER BY sequence"),
                    key,
                )
            ).mappings()
        ]
        messages = await connection.scalar(
            text("SELECT count(*) FROM outbox_messages WHERE shipment_id = :id"), key
        )
        feed = await connection.scalar(
            text("SELECT count(*) FROM events WHERE shipment_id = :id"), key
        )
        counters = {
            str(partner_id): count
            for partner_id, count in await connection.execute(
                text("SELECT id, active_shipments FROM partners")
            )
        }
    return Stored(shipment, events, int(messages or 0), int(feed or 0), counters)


async def assert_refused_and_unchanged(
    db_engine: AsyncEngine,
    shipment_id: str,
    before: Stored,
    response: httpx.Response,
    status: int,
    code: str,
) -> dict[str, Any]:
    problem = assert_problem(response, status, code)
    assert await stored(db_engine, shipment_id) == before
    return problem


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str],
    body: Any,
) -> httpx.Response:
    """A request whose body is `body` as JSON, or, when it is a str, that exact text (NaN,
    1e400, a lone surrogate: what a JSON encoder would refuse or change)."""
    content = body if isinstance(body, str) else json.dumps(body)
    return await client.request(
        method,
        url,
        content=content.encode("utf-8", "surrogatepass"),
        headers={**headers, "Content-Type": "application/json"},
    )


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def shipment_at(
    client: httpx.AsyncClient, db_engine: AsyncEngine, parties: Parties, status: str
) -> dict[str, Any]:
    shipment = await create_shipment(client, parties.seller_headers)
    return await bring_to(client, db_engine, parties, shipment["id"], status)


# --- failed attempts (§12.1) ------------------------------------------------------------------

# (body, status, code) for a report on an out-for-delivery shipment.
FAILED_ATTEMPT_ABUSE: list[tuple[str, Any, int, str]] = [
    (
        "unknown_reason",
        {"status": "in_transit", "failure_reason": "lost_in_space"},
        422,
        VALIDATION,
    ),
    ("reason_wrong_case", {"status": "in_transit", "failure_reason": "REFUSED"}, 422, VALIDATION),
    ("reason_as_list", {"status": "in_transit", "failure_reason": ["refused"]}, 422, VALIDATION),
    ("reason_as_number", {"status": "in_transit", "failure_reason": 3}, 422, VALIDATION),
    (
        "reason_with_nul",
        {"status": "in_transit", "failure_reason": "refused\u0000"},
        422,
        VALIDATION,
    ),
    ("reason_null", {"status": "in_transit", "failure_reason": None}, 422, VALIDATION),
    ("other_without_note", {"status": "in_transit", "failure_reason": "other"}, 422, VALIDATION),
    (
        "other_with_blank_note",
        {"status": "in_transit", "failure_reason": "other", "note": "   "},
        422,
        VALIDATION,
    ),
    (
        "other_with_nul_note",
        {"status": "in_transit", "failure_reason": "other", "note": "at\u0000door"},
        422,
        VALIDATION,
    ),
    (
        "reason_with_delivered",
        {"status": "delivered", "failure_reason": "refused", "verification_code": "123456"},
        422,
        VALIDATION,
    ),
    (
        "reason_with_out_for_delivery",
        {"status": "out_for_delivery", "failure_reason": "weather"},
        422,
        VALIDATION,
    ),
    ("reason_without_status", {"failure_reason": "weather", "note": "Storm"}, 422, VALIDATION),
    (
        "reason_that_does_not_return_at_once",
        {"status": "returned", "failure_reason": "weather"},
        422,
        "failure_reason_not_allowed",
    ),
    ("back_in_transit_without_reason", {"status": "in_transit"}, 422, "failure_reason_required"),
    (
        "back_in_transit_with_only_a_note",
        {"status": "in_transit", "note": "Nobody home"},
        422,
        "failure_reason_required",
    ),
    ("attempts_set_by_client", {"status": "in_transit", "attempts": 0}, 422, VALIDATION),
    (
        "delivery_attempts_set_by_client",
        {"status": "in_transit", "failure_reason": "weather", "delivery_attempts": -5},
        422,
        VALIDATION,
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [case[1:] for case in FAILED_ATTEMPT_ABUSE],
    ids=[case[0] for case in FAILED_ATTEMPT_ABUSE],
)
async def test_a_malformed_failed_attempt_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, body: Any, status: int, code: str
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, "out_for_delivery")
    before = await stored(db_engine, shipment["id"])

    response = await send(
        client, "PATCH", f"/shipments/{shipment['id']}", parties.partner_headers, body
    )

    await assert_refused_and_unchanged(db_engine, shipment["id"], before, response, status, code)


@pytest.mark.parametrize(
    ("current", "body", "status", "code"),
    [
        (
            "placed",
            {"status": "in_transit", "failure_reason": "weather"},
            422,
            "failure_reason_not_allowed",
        ),
        (
            "in_transit",
            {"status": "in_transit", "failure_reason": "weather"},
            422,
            "failure_reason_not_allowed",
        ),
        (
            "in_transit",
            {"status": "returned", "failure_reason": "refused"},
            422,
            "failure_reason_not_allowed",
        ),
        (
            "in_transit",
            {"status": "in_transit", "failure_reason": "other", "note": "Dog"},
            422,
            "failure_reason_not_allowed",
        ),
        (
            "delivered",
            {"status": "in_transit", "failure_reason": "weather"},
            409,
            "invalid_transition",
        ),
        (
            "returned",
            {"status": "returned", "failure_reason": "refused"},
            409,
            "invalid_transition",
        ),
        (
            "cancelled",
            {"status": "in_transit", "failure_reason": "damaged"},
            409,
            "invalid_transition",
        ),
    ],
)
async def test_a_failed_attempt_on_a_shipment_not_out_for_delivery_is_refused(
    client: httpx.AsyncClient,
    db_engine: AsyncEngine,
    current: str,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, current)
    before = await stored(db_engine, shipment["id"])

    response = await send(
        client, "PATCH", f"/shipments/{shipment['id']}", parties.partner_headers, body
    )

    await assert_refused_and_unchanged(db_engine, shipment["id"], before, response, status, code)
    assert before.shipment["delivery_attempts"] == 0


# --- event places (§12.2) ---------------------------------------------------------------------

# Raw JSON texts of `location`, each refused as a whole (422).
LOCATION_ABUSE: dict[str, str] = {
    "lat_above_90": '{"lat": 90.0001, "lon": 0}',
    "lat_below_minus_90": '{"lat": -91, "lon": 0}',
    "lon_above_180": '{"lat": 0, "lon": 180.5}',
    "lon_below_minus_180": '{"lat": 0, "lon": -181}',
    "lat_nan": '{"lat": NaN, "lon": 0}',
    "lon_infinity": '{"lat": 0, "lon": Infinity}',
    "lat_minus_infinity": '{"lat": -Infinity, "lon": 0}',
    "lat_1e400": '{"lat": 1e400, "lon": 0}',
    "lon_minus_1e400": '{"lat": 0, "lon": -1e400}',
    "huge_integer": '{"lat": ' + "9" * 4000 + ', "lon": 0}',
    "integer_past_pythons_digit_limit": '{"lat": ' + "9" * 5000 + ', "lon": 0}',
    "lat_as_string": '{"lat": "42.36", "lon": -71.05}',
    "lon_as_bool": '{"lat": 42.36, "lon": true}',
    "lat_without_lon": '{"lat": 42.36}',
    "lon_without_lat": '{"lon": -71.05, "zip_code": "02110"}',
    "lat_null_with_lon": '{"lat": null, "lon": -71.05}',
    "empty_place": "{}",
    "all_null": '{"zip_code": null, "city": null, "lat": null, "lon": null}',
    "location_as_string": '"02110"',
    "location_as_list": "[42.36, -71.05]",
    "unknown_field": '{"zip_code": "02110", "altitude": 12}',
    "zip_with_nul": '{"zip_code": "021\\u000010"}',
    "zip_with_symbols": '{"zip_code": "02110; DROP"}',
    "city_with_nul": '{"city": "Bos\\u0000ton"}',
    "city_lone_surrogate": '{"city": "Bos\\ud800ton"}',
    "city_too_long": '{"city": "' + "B" * 101 + '"}',
    "city_blank": '{"city": "   "}',
}


# Bodies the JSON parser itself refuses (400), before any validation.
UNPARSABLE = {"integer_past_pythons_digit_limit"}


@pytest.mark.parametrize(
    ("location", "status", "code"),
    [
        (value, *((400, "bad_request") if name in UNPARSABLE else (422, VALIDATION)))
        for name, value in LOCATION_ABUSE.items()
    ],
    ids=LOCATION_ABUSE.keys(),
)
async def test_an_impossible_place_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, location: str, status: int, code: str
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, "in_transit")
    before = await stored(db_engine, shipment["id"])
    url = f"/shipments/{shipment['id']}"

    alone = await send(client, "PATCH", url, parties.partner_headers, f'{{"location": {location}}}')
    with_status = await send(
        client,
        "PATCH",
        url,
        parties.partner_headers,
        f'{{"status": "out_for_delivery", "location": {location}}}',
    )

    for response in (alone, with_status):
        await assert_refused_and_unchanged(
            db_engine, shipment["id"], before, response, status, code
        )


async def test_a_zip_sent_twice_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, "in_transit")
    before = await stored(db_engine, shipment["id"])

    response = await send(
        client,
        "PATCH",
        f"/shipments/{shipment['id']}",
        parties.partner_headers,
        {"location_zip": "02110", "location": {"zip_code": "02111"}},
    )

    await assert_refused_and_unchanged(db_engine, shipment["id"], before, response, 422, VALIDATION)


# --- event times (§12.2) ----------------------------------------------------------------------


def relative(**delta: float) -> str:
    return iso(datetime.now(UTC) + timedelta(**delta))


# (JSON value of occurred_at, code): the schema's refusals (validation_failed) and the
# service's (invalid_occurred_at, with the reason in `occurred_at`).
OCCURRED_AT_ABUSE: dict[str, tuple[Any, str, str | None]] = {
    "future_beyond_skew": (lambda: relative(minutes=10), "invalid_occurred_at", "future"),
    "far_future": (lambda: "9999-12-31T23:59:59Z", "invalid_occurred_at", "future"),
    "older_than_max_scan_age": (lambda: relative(hours=-73), "invalid_occurred_at", "too_old"),
    "year_one": (lambda: "0001-01-01T00:00:00Z", "invalid_occurred_at", "too_old"),
    "before_creation": (lambda: relative(hours=-1), "invalid_occurred_at", "before_creation"),
    "naive": (lambda: datetime.now(UTC).replace(tzinfo=None).isoformat(), VALIDATION, None),
    "date_only": (lambda: "2026-12-07", VALIDATION, None),
    "year_9999_west_offset": (lambda: "9999-12-31T23:59:59-14:00", VALIDATION, None),
    "year_9999_west_offset_minutes": (lambda: "9999-12-31T20:00:00-04:30", VALIDATION, None),
    "year_one_east_offset": (lambda: "0001-01-01T00:00:00+14:00", VALIDATION, None),
    "offset_out_of_range": (lambda: "2026-12-07T10:00:00+24:00", VALIDATION, None),
    "month_13": (lambda: "2026-13-01T10:00:00Z", VALIDATION, None),
    "year_10000": (lambda: "10000-01-01T00:00:00Z", VALIDATION, None),
    "garbage": (lambda: "yesterday at noon", VALIDATION, None),
    "nul": (lambda: "2026-12-07T10:00:00Z\u0000", VALIDATION, None),
    "huge_number": (lambda: 1e300, VALIDATION, None),
    "list": (lambda: ["2026-12-07T10:00:00Z"], VALIDATION, None),
    "null": (lambda: None, VALIDATION, None),
}


@pytest.mark.parametrize(
    ("make_value", "code", "reason"), OCCURRED_AT_ABUSE.values(), ids=OCCURRED_AT_ABUSE.keys()
)
async def test_an_implausible_event_time_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
    db_engine: AsyncEngine,
    make_value: Any,
    code: str,
    reason: str | None,
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, "in_transit")
    before = await stored(db_engine, shipment["id"])
    url = f"/shipments/{shipment['id']}"

    responses = [
        await send(
            client,
            "PATCH",
            url,
            parties.partner_headers,
            {"location": {"zip_code": "02110"}, "occurred_at": make_value()},
        ),
        await send(
            client,
            "PATCH",
            url,
            parties.partner_headers,
            {"status": "out_for_delivery", "occurred_at": make_value()},
        ),
    ]

    for response in responses:
        problem = await assert_refused_and_unchanged(
            db_engine, shipment["id"], before, response, 422, code
        )
        if reason is not None:
            assert problem["occurred_at"] == reason


# --- scans (§12.2) ----------------------------------------------------------------------------


def scan(shipment: dict[str, Any], scan_id: str, **report: Any) -> dict[str, Any]:
    return {
        "scan_id": scan_id,
        "tracking_number": shipment["tracking_number"],
        **(report or {"location": {"zip_code": "02110"}}),
    }


async def post_scans(
    client: httpx.AsyncClient, headers: dict[str, str], body: Any
) -> httpx.Response:
    return await send(client, "POST", "/scans", headers, body)


# Batches refused as a whole (422): each also carries a valid scan, which must not be recorded.
def _batch_abuse(valid: dict[str, Any]) -> dict[str, Any]:
    one = dict(valid)
    return {
        "no_scans": {"scans": []},
        "scans_null": {"scans": None},
        "scans_not_a_list": {"scans": valid},
        "body_a_list": [valid],
        "101_scans": {"scans": [{**one, "scan_id": f"s{n}"} for n in range(101)]},
        "scan_id_with_space": {"scans": [one, {**one, "scan_id": "van 12"}]},
        "scan_id_with_nul": {"scans": [one, {**one, "scan_id": "van\u000012"}]},
        "scan_id_with_tab": {"scans": [one, {**one, "scan_id": "van\t12"}]},
        "scan_id_not_ascii": {"scans": [one, {**one, "scan_id": "vän-12"}]},
        "scan_id_101_chars": {"scans": [one, {**one, "scan_id": "x" * 101}]},
        "scan_id_empty": {"scans": [one, {**one, "scan_id": ""}]},
        "scan_id_number": {"scans": [one, {**one, "scan_id": 12}]},
        "scan_id_missing": {"scans": [one, {k: v for k, v in one.items() if k != "scan_id"}]},
        "tracking_number_too_short": {"scans": [one, {**one, "tracking_number": "AB"}]},
        "tracking_number_with_nul": {"scans": [one, {**one, "tracking_number": "ABC\u0000DEF"}]},
        "tracking_number_sql": {"scans": [one, {**one, "tracking_number": "' OR 1=1 --"}]},
        "nothing_to_report": {
            "scans": [one, {"scan_id": "s2", "tracking_number": one["tracking_number"]}]
        },
        "unknown_field": {
            "scans": [one, {**one, "scan_id": "s2", "partner_id": str(uuid.uuid4())}]
        },
        "lat_nan": {
            "scans": [one, {**one, "scan_id": "s2", "location": {"lat": float("nan"), "lon": 0}}]
        },
        "naive_time": {
            "scans": [one, {**one, "scan_id": "s2", "occurred_at": "2026-12-07T10:00:00"}]
        },
        "unknown_reason": {
            "scans": [
                one,
                {**one, "scan_id": "s2", "status": "in_transit", "failure_reason": "gone"},
            ]
        },
        "other_without_note": {
            "scans": [
                one,
                {**one, "scan_id": "s2", "status": "in_transit", "failure_reason": "other"},
            ]
        },
    }


BATCH_CASES = list(_batch_abuse({"scan_id": "s1", "tracking_number": "X" * 10}))


@pytest.mark.parametrize("case", BATCH_CASES)
async def test_a_malformed_batch_is_refused_whole_and_records_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, case: str
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, "in_transit")
    before = await stored(db_engine, shipment["id"])
    body = _batch_abuse(scan(shipment, "s1"))[case]

    response = await post_scans(client, parties.partner_headers, body)

    await assert_refused_and_unchanged(db_engine, shipment["id"], before, response, 422, VALIDATION)


async def test_a_batch_of_raw_hostile_json_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, "in_transit")
    before = await stored(db_engine, shipment["id"])
    number = shipment["tracking_number"]
    bodies = [
        f'{{"scans": [{{"scan_id": "s1", "tracking_number": "{number}",'
        ' "location": {"lat": 1e400, "lon": 0}}]}',
        f'{{"scans": [{{"scan_id": "s\\ud800", "tracking_number": "{number}", "note": "x"}}]}}',
        f'{{"scans": [{{"scan_id": "s1", "tracking_number": "{number}", "note": "\\ud800"}}]}}',
        '{"scans": [',
        "null",
    ]

    for body in bodies:
        response = await post_scans(client, parties.partner_headers, body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert await stored(db_engine, shipment["id"]) == before


async def test_scans_of_shipments_that_are_not_the_partners_are_rejected_one_by_one(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Another partner's tracking number, and one that exists nowhere, are each answered 404
    inside a 200 batch; the other partner's shipment is untouched, the partner's own scan is
    recorded."""
    parties = await make_parties(client)
    own = await shipment_at(client, db_engine, parties, "in_transit")
    rival = await make_parties(client, serviceable_zip_codes=[OTHER_PARTNERS_ZIP])
    theirs = await create_shipment(
        client, rival.seller_headers, destination={"zip_code": OTHER_PARTNERS_ZIP}
    )
    their_before = await stored(db_engine, theirs["id"])
    scans = [
        scan(theirs, "mine-1", status="in_transit"),
        scan(own, "mine-2"),
        {"scan_id": "mine-3", "tracking_number": "ZZZZZZZZZZZZ", "note": "Who is this?"},
        scan(theirs, "mine-4", note="Peeking"),
        {**scan(theirs, "mine-5"), "tracking_number": theirs["tracking_number"].lower()},
    ]

    response = await post_scans(client, parties.partner_headers, {"scans": scans})

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["result"] for r in results] == [
        "rejected",
        "accepted",
        "rejected",
        "rejected",
        "rejected",
    ]
    for result in (results[0], results[2], results[3], results[4]):
        assert result["sequence"] is None
        assert result["problem"]["status"] == 404
        assert result["problem"]["code"] == "shipment_not_found"
        # The same answer for a number that exists and one that does not: nothing to probe.
        assert result["problem"]["detail"] == results[2]["problem"]["detail"]
    assert await stored(db_engine, theirs["id"]) == their_before


async def test_a_sellers_token_cannot_post_scans(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, "in_transit")
    before = await stored(db_engine, shipment["id"])

    response = await post_scans(
        client, parties.seller_headers, {"scans": [scan(shipment, "seller-1")]}
    )

    await assert_refused_and_unchanged(
        db_engine, shipment["id"], before, response, 403, "wrong_account_kind"
    )
    anonymous = await post_scans(client, {}, {"scans": [scan(shipment, "anon-1")]})
    assert anonymous.status_code == 401
    assert await stored(db_engine, shipment["id"]) == before


async def test_a_partners_test_key_sees_no_live_shipment_to_scan(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, "in_transit")
    test_key = await api_key_headers(client, parties.partner_headers, kind="partner", mode="test")
    before = await stored(db_engine, shipment["id"])

    response = await post_scans(
        client,
        test_key,
        {"scans": [scan(shipment, "t-1"), scan(shipment, "t-2", status="returned")]},
    )

    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        assert result["result"] == "rejected"
        assert result["problem"]["code"] == "shipment_not_found"
    assert await stored(db_engine, shipment["id"]) == before


async def test_refused_scans_in_a_batch_record_nothing_and_the_rest_carry_on(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Scans the service refuses (out-of-place reasons, implausible times, impossible
    transitions, a reused scan id) each get their problem; only the valid ones are recorded,
    and a refused scan's id stays free."""
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, "in_transit")
    before = await stored(db_engine, shipment["id"])
    scans = [
        scan(shipment, "r-1", status="in_transit", failure_reason="weather"),
        scan(shipment, "r-2", occurred_at=relative(hours=-100), note="Late upload"),
        scan(shipment, "r-3", occurred_at=relative(hours=1), note="Clock ahead"),
        scan(shipment, "r-4", occurred_at=relative(hours=-1), note="Before it existed"),
        scan(shipment, "r-5", status="delivered", verification_code="000000"),
        scan(shipment, "r-6", status="placed"),
        scan(shipment, "ok-1", note="At the hub"),
        scan(shipment, "ok-1", note="The same scan id again"),
        scan(shipment, "r-7", status="in_transit"),  # in transit again: a plain scan
    ]

    response = await post_scans(client, parties.partner_headers, {"scans": scans})

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    codes = [(r["result"], (r["problem"] or {}).get("code")) for r in results]
    assert codes == [
        ("rejected", "failure_reason_not_allowed"),
        ("rejected", "invalid_occurred_at"),
        ("rejected", "invalid_occurred_at"),
        ("rejected", "invalid_occurred_at"),
        ("rejected", "invalid_transition"),
        ("rejected", "invalid_transition"),
        ("accepted", None),
        ("duplicate", None),
        ("accepted", None),
    ]
    assert results[7]["sequence"] == results[6]["sequence"]
    after = await stored(db_engine, shipment["id"])
    added = after.events[len(before.events) :]
    assert after.events[: len(before.events)] == before.events
    assert [(e["scan_id"], e["status"]) for e in added] == [
        ("ok-1", "in_transit"),
        ("r-7", "in_transit"),
    ]
    assert after.shipment["delivery_attempts"] == 0
    assert after.shipment["status"] == "in_transit"
    assert after.counters == before.counters

    # A rejected scan's id was not used up: sent again, valid, it is recorded.
    again = await post_scans(client, parties.partner_headers, {"scans": [scan(shipment, "r-1")]})
    assert [r["result"] for r in again.json()["results"]] == ["accepted"]


# --- corrections (§12.3) ----------------------------------------------------------------------


async def correct(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    shipment_id: str,
    body: Any,
) -> httpx.Response:
    return await send(client, "PATCH", f"/shipments/{shipment_id}/delivery-details", headers, body)


@pytest.mark.parametrize("status", ["out_for_delivery", "delivered", "cancelled", "returned"])
async def test_a_correction_after_the_details_are_locked_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine, status: str
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, status)
    before = await stored(db_engine, shipment["id"])

    for body in (
        {"recipient": {"name": "Ada Lovelace"}},
        {"destination": {"zip_code": UNSERVED_ZIP}},
        {"destination": {"address_line": "1 Other St"}, "recipient": {"phone": "+1 617 555 0100"}},
    ):
        response = await correct(client, parties.seller_headers, shipment["id"], body)
        problem = await assert_refused_and_unchanged(
            db_engine, shipment["id"], before, response, 409, "delivery_details_locked"
        )
        assert problem["current_status"] == status


CORRECTION_ABUSE: dict[str, Any] = {
    "empty": {},
    "empty_parts": {"recipient": {}, "destination": {}},
    "null_parts": {"recipient": None, "destination": None},
    "name_null": {"recipient": {"name": None}},
    "email_null": {"recipient": {"email": None}},
    "zip_null": {"destination": {"zip_code": None}},
    "name_blank": {"recipient": {"name": "   "}},
    "name_too_long": {"recipient": {"name": "N" * 101}},
    "name_with_nul": {"recipient": {"name": "Ada\u0000Lovelace"}},
    "email_bad": {"recipient": {"email": "not-an-email"}},
    "email_with_nul": {"recipient": {"email": "ada\u0000@example.com"}},
    "email_two_addresses": {"recipient": {"email": "ada@example.com, eve@example.com"}},
    "email_header_injection": {"recipient": {"email": "ada@example.com\r\nBcc: eve@example.com"}},
    "email_as_number": {"recipient": {"email": 42}},
    "phone_letters": {"recipient": {"phone": "call me maybe"}},
    "address_with_nul": {"destination": {"address_line": "1 Main\u0000St"}},
    "address_too_long": {"destination": {"address_line": "A" * 301}},
    "city_with_nul": {"destination": {"city": "Bos\u0000ton"}},
    "zip_with_symbols": {"destination": {"zip_code": "02139<script>"}},
    "zip_too_long": {"destination": {"zip_code": "1" * 21}},
    "zip_as_number": {"destination": {"zip_code": 2139}},
    "unknown_top_field": {"recipient": {"name": "Ada"}, "status": "delivered"},
    "server_owned_partner": {"partner_id": str(uuid.uuid4())},
    "unknown_recipient_field": {"recipient": {"name": "Ada", "verified": True}},
    "destination_country": {"destination": {"zip_code": "02139", "country": "FR"}},
    "body_a_list": [{"recipient": {"name": "Ada"}}],
    "body_a_string": '"recipient"',
    "lone_surrogate": '{"recipient": {"name": "Ada\\ud800"}}',
    "nan": '{"recipient": {"name": NaN}}',
    "huge_number": '{"destination": {"zip_code": 1e400}}',
    "truncated_json": '{"recipient": {"name": "Ada"',
}


@pytest.mark.parametrize("body", CORRECTION_ABUSE.values(), ids=CORRECTION_ABUSE.keys())
async def test_a_malformed_correction_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, body: Any
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    before = await stored(db_engine, shipment["id"])

    response = await correct(client, parties.seller_headers, shipment["id"], body)

    await assert_refused_and_unchanged(db_engine, shipment["id"], before, response, 422, VALIDATION)


async def test_a_correction_of_someone_elses_shipment_is_not_found(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    _, stranger = await account_with_token(client, "seller")
    before = await stored(db_engine, shipment["id"])
    body = {"recipient": {"email": "eve@example.com"}}

    theirs = await correct(client, stranger, shipment["id"], body)
    unknown = await correct(client, parties.seller_headers, str(uuid.uuid4()), body)
    not_an_id = await correct(client, parties.seller_headers, "not-a-uuid", body)

    await assert_refused_and_unchanged(
        db_engine, shipment["id"], before, theirs, 404, "shipment_not_found"
    )
    # Someone else's and nobody's look the same.
    assert theirs.json()["detail"] == unknown.json()["detail"]
    assert_problem(unknown, 404, "shipment_not_found")
    assert not_an_id.status_code == 422


async def test_a_partner_cannot_correct_delivery_details(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    before = await stored(db_engine, shipment["id"])

    response = await correct(
        client, parties.partner_headers, shipment["id"], {"recipient": {"name": "Eve"}}
    )
    anonymous = await correct(client, {}, shipment["id"], {"recipient": {"name": "Eve"}})

    await assert_refused_and_unchanged(
        db_engine, shipment["id"], before, response, 403, "wrong_account_kind"
    )
    assert anonymous.status_code == 401
    assert await stored(db_engine, shipment["id"]) == before


async def test_a_sellers_test_key_cannot_correct_a_live_shipment(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    test_key = await api_key_headers(client, parties.seller_headers, mode="test")
    before = await stored(db_engine, shipment["id"])

    response = await correct(client, test_key, shipment["id"], {"recipient": {"name": "Eve"}})

    await assert_refused_and_unchanged(
        db_engine, shipment["id"], before, response, 404, "shipment_not_found"
    )


@pytest.mark.parametrize("if_match", ['"1"', "1", 'W/"1"', '"0"', '"999999999"'])
async def test_a_correction_with_a_stale_version_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine, if_match: str
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, "in_transit")
    assert shipment["version"] == 2
    before = await stored(db_engine, shipment["id"])

    response = await correct(
        client,
        {**parties.seller_headers, "If-Match": if_match},
        shipment["id"],
        {"destination": {"zip_code": UNSERVED_ZIP}, "recipient": {"name": "Ada"}},
    )

    problem = await assert_refused_and_unchanged(
        db_engine, shipment["id"], before, response, 412, "version_mismatch"
    )
    assert problem["current_version"] == 2


@pytest.mark.parametrize("if_match", ["abc", "2.0", "-2", "1e3", "9" * 12, '"2", "3"'])
async def test_a_correction_with_a_malformed_if_match_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine, if_match: str
) -> None:
    parties = await make_parties(client)
    shipment = await shipment_at(client, db_engine, parties, "in_transit")
    before = await stored(db_engine, shipment["id"])

    response = await correct(
        client,
        {**parties.seller_headers, "If-Match": if_match},
        shipment["id"],
        {"recipient": {"name": "Ada"}},
    )

    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/problem+json"
    if response.status_code != 200:
        assert await stored(db_engine, shipment["id"]) == before


async def test_a_correction_to_a_zip_nobody_serves_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Neither the zip nor anything sent with it: the name in the same body is not applied,
    the shipment keeps its partner, and no partner's counter moves."""
    parties = await make_parties(client)
    placed = await create_shipment(client, parties.seller_headers)
    moving = await shipment_at(client, db_engine, parties, "in_transit")
    body = {
        "destination": {"zip_code": UNSERVED_ZIP, "city": "Nowhere"},
        "recipient": {"name": "Ada Lovelace", "email": "ada@example.com"},
    }

    for shipment in (placed, moving):
        before = await stored(db_engine, shipment["id"])
        response = await correct(client, parties.seller_headers, shipment["id"], body)
        problem = await assert_refused_and_unchanged(
            db_engine, shipment["id"], before, response, 409, "no_partner_available"
        )
        assert problem["reason"] == "zip_not_served"
        assert str(before.shipment["partner_id"]) == parties.partner["id"]


async def test_a_correction_to_a_zip_whose_only_partner_is_full_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    full = await make_parties(
        client, serviceable_zip_codes=[OTHER_PARTNERS_ZIP], max_handling_capacity=1
    )
    await create_shipment(client, full.seller_headers, destination={"zip_code": OTHER_PARTNERS_ZIP})
    before = await stored(db_engine, shipment["id"])

    response = await correct(
        client,
        parties.seller_headers,
        shipment["id"],
        {"destination": {"zip_code": OTHER_PARTNERS_ZIP}},
    )

    problem = await assert_refused_and_unchanged(
        db_engine, shipment["id"], before, response, 409, "no_partner_available"
    )
    assert problem["reason"] == "partners_full"


async def test_a_suspended_or_pending_partner_serving_the_new_zip_is_not_chosen(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Only approved partners take shipments (§4): a correction to a zip served only by a
    suspended partner is 409 zip_not_served, and nothing changes."""
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)
    suspended, _ = await account_with_token(
        client, "partner", serviceable_zip_codes=[OTHER_PARTNERS_ZIP], max_handling_capacity=9
    )
    async with db_engine.begin() as connection:
        await connection.execute(
            text("UPDATE partners SET status = 'suspended' WHERE id = :id"),
            {"id": uuid.UUID(suspended["id"])},
        )
    before = await stored(db_engine, shipment["id"])

    response = await correct(
        client,
        parties.seller_headers,
        shipment["id"],
        {"destination": {"zip_code": OTHER_PARTNERS_ZIP}},
    )

    problem = await assert_refused_and_unchanged(
        db_engine, shipment["id"], before, response, 409, "no_partner_available"
    )
    assert problem["reason"] == "zip_not_served"


# --- corrections as an email cannon (§10) -----------------------------------------------------

EMAILS_PER_HOUR = 2


@pytest.fixture
async def small_email_budget(database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        database_url, redis_url, recipient_emails_per_seller_per_hour=EMAILS_PER_HOUR
    )
    async with running_client(create_app(settings)) as http:
        yield http


async def test_corrections_do_not_send_recipient_emails_past_the_sellers_hourly_budget(
    small_email_budget: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    """Each correction of the recipient's email queues an email to the new address, in words
    the seller chose (the recipient's name, the content). Without a budget a seller turns the
    service into a mailer to any address: 20 shipments x ~198 corrections each, at once.
    RECIPIENT_EMAILS_PER_SELLER_PER_HOUR (§10) defers recipient emails past the seller's budget;
    the correction's email must count against it like the creation's."""
    client = small_email_budget
    parties = await make_parties(client)
    shipment = await create_shipment(client, parties.seller_headers)  # one email of the two
    for index in range(4):
        body = {"recipient": {"email": f"victim-{index}@example.com", "name": "Buy now at"}}
        response = await correct(client, parties.seller_headers, shipment["id"], body)
        assert response.status_code == 200, response.text
    now = await database_now(db_engine)

    rows = await outbox_rows(db_engine, shipment["id"])
    due_now = [
        row.payload["template"] for row in rows if row.next_attempt_at <= now + timedelta(seconds=5)
    ]
    assert due_now.count("details_corrected") <= EMAILS_PER_HOUR - 1, due_now
