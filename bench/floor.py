"""The benchmark's "floor": the least code that does the work the product requires for the
benchmark's requests, written by hand on Starlette + asyncpg + redis.

It shares no code with the API (only `backend.config.Settings`, for the client settings), so the
API's data layer can change without the floor changing with it. No ORM, no validation layer, no
dependency injection, no middleware, no explicit transaction around a single statement. What each
request runs (bench/README.md lists the same):

- authentication (every route but login and tracking): the API's JWT checks (HS256, `typ`
  at+jwt, the audience of the token's kind, the issuer, the required claims, an integer `ver`),
  then one Redis MGET of the token's revocation and the account's password-reset marker. The
  account's row (its token version, a partner's approval) is read in the request's first SQL
  statement, never in a statement of its own;
- GET /shipments/{id} (a seller's): one statement, the account and the shipment view (partner
  name, review, tags, whole timeline) with the ownership in its WHERE clause;
- GET /shipments?limit=N (a seller's, newest first, no filters): one statement, the account and
  N + 1 views (the extra one tells whether another page follows);
- GET /track/{tracking_number} (no authentication): one statement, the public fields, the newest
  50 events and the total;
- POST /shipments: Redis EVALSHA (the seller's create rate and its recipient-email slot, the
  API's script), then in one transaction: (1) the account and the partner claim (a conditional
  UPDATE ... RETURNING of the least-loaded approved partner with room), (2) the shipment, its
  first event and any new tags, (3) the tag links, the recipient's email in the outbox, the
  per-seller advisory lock, the event-feed row and a webhook outbox row per enabled endpoint;
  after the commit, the live-update PUBLISH. The response is built from what was written;
- PATCH /shipments/{id} (the assigned partner; the statuses that need no delivery code): one
  transaction of (1) the account and the shipment locked FOR UPDATE, (2) the UPDATE, the new
  event and the view read back, (3) the advisory lock, the event-feed row and the webhook rows;
  after the commit, the PUBLISH;
- POST /seller/token: the API's three Redis window counters, the seller by email (one
  statement), bcrypt on one of PASSWORD_HASH_CONCURRENCY threads (503 beyond
  PASSWORD_HASH_QUEUE_LIMIT waiting), the two counters given back, a new JWT.

Run (from the repository root, which puts `backend` on the path):
    FLOOR_DATABASE_URL=postgresql://... FLOOR_REDIS_URL=redis://... ENVIRONMENT=dev \\
    JWT_SECRET_KEY=... uvicorn --app-dir bench floor:app
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import bcrypt
import jwt
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.config import Settings

KINDS = ("seller", "partner")
REQUIRED_CLAIMS = ["sub", "kind", "aud", "jti", "iat", "exp", "iss", "ver"]
TRACKING_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
TRACKING_NUMBER = re.compile(r"[A-Za-z0-9]{6,20}")
PUBLIC_TIMELINE_LENGTH = 50
# The statuses a partner may report without a delivery code, and what may follow what.
PARTNER_NEXT = {
    "placed": {"in_transit"},
    "in_transit": {"in_transit"},
    "out_for_delivery": {"in_transit"},
}
DESCRIPTIONS = {"placed": "Shipment created", "in_transit": "In transit"}

# --- SQL ------------------------------------------------------------------------------------

# The shipment view of its seller, for a query that names the shipment `s`.
_VIEW_COLUMNS = """
    s.id, s.tracking_number, s.status, s.content, s.weight_kg, s.destination_zip,
    s.destination_address_line, s.destination_city, s.recipient_name, s.recipient_email,
    s.recipient_phone, s.reference, s.seller_id, s.partner_id, p.name AS partner_name,
    s.estimated_delivery, s.version, s.created_at, s.updated_at, s.livemode,
    r.rating AS review_rating, r.comment AS review_comment, r.created_at AS review_created_at,
    s.delivery_attempts,
    (SELECT array_agg((e.sequence, e.status, e.location_zip, e.description, e.created_at,
                       e.livemode, e.occurred_at, e.location_city, e.location_lat,
                       e.location_lon, e.failure_reason, e.note)
                      ORDER BY e.occurred_at, e.sequence)
       FROM shipment_events e WHERE e.shipment_id = s.id) AS timeline,
    ARRAY(SELECT t.name FROM shipment_tags st JOIN tags t ON t.id = st.tag_id
          WHERE st.shipment_id = s.id ORDER BY t.name) AS tags
"""
_VIEW_JOINS = """
    JOIN partners p ON p.id = s.partner_id LEFT JOIN reviews r ON r.shipment_id = s.id
"""
# The caller's row and its shipment: a row with NULL view columns when the shipment is not the
# caller's (404), no row when the account is gone (401).
READ_ONE = f"""
SELECT a.token_version AS caller_version, v.*
FROM sellers a
LEFT JOIN LATERAL (
    SELECT {_VIEW_COLUMNS} FROM shipments s {_VIEW_JOINS}
    WHERE s.id = $2 AND s.seller_id = a.id AND s.livemode
) v ON true
WHERE a.id = $1
"""  # noqa: S608 - fragments of this module, no input
READ_PAGE = f"""
SELECT a.token_version AS caller_version, v.*
FROM sellers a
LEFT JOIN LATERAL (
    SELECT {_VIEW_COLUMNS} FROM shipments s {_VIEW_JOINS} WHERE s.seller_id = a.id AND s.livemode
    ORDER BY s.created_at DESC, s.id DESC LIMIT $2
) v ON true
WHERE a.id = $1
ORDER BY v.created_at DESC, v.id DESC
"""  # noqa: S608 - fragments of this module, no input
TRACK = f"""
SELECT s.tracking_number, s.status, s.estimated_delivery, s.destination_zip,
       s.destination_city, p.name AS partner_name, s.last_sequence, s.livemode,
       (SELECT array_agg((e.sequence, e.status, e.location_zip, e.description, e.created_at,
                          e.livemode, e.occurred_at, e.location_city, e.location_lat,
                          e.location_lon, e.failure_reason, e.note)
                         ORDER BY e.occurred_at, e.sequence)
          FROM shipment_events e
          WHERE e.shipment_id = s.id
            AND e.sequence > s.last_sequence - {PUBLIC_TIMELINE_LENGTH}) AS timeline
FROM shipments s JOIN partners p ON p.id = s.partner_id
WHERE s.tracking_number = $1
"""  # noqa: S608 - fragments of this module, no input
# One slot of the least-loaded approved partner with room serving the zip, for a caller whose
# token version is still current. After a wait on the candidate's lock PostgreSQL re-checks the
# room on the new row; `room` (evaluated only when nothing was claimed) says whether to retry.
CLAIM_PARTNER = """
WITH caller AS (
    SELECT name, token_version, email_verified_at FROM sellers WHERE id = $1
), claimed AS (
    UPDATE partners SET active_shipments = active_shipments + 1
    WHERE id = (
        SELECT id FROM partners
        WHERE serviceable_zip_codes @> ARRAY[$2::varchar]
          AND active_shipments < max_handling_capacity AND status = 'approved'
        ORDER BY active_shipments, id LIMIT 1
    )
    AND active_shipments < max_handling_capacity AND status = 'approved'
    AND EXISTS (SELECT 1 FROM caller WHERE token_version = $3)
    RETURNING id, name
)
SELECT c.token_version AS caller_version, c.name AS caller_name, c.email_verified_at,
       p.id AS partner_id, p.name AS partner_name,
       CASE WHEN p.id IS NULL THEN EXISTS (
           SELECT 1 FROM partners
           WHERE serviceable_zip_codes @> ARRAY[$2::varchar]
             AND active_shipments < max_handling_capacity AND status = 'approved'
       ) END AS room
FROM caller c LEFT JOIN claimed p ON true
"""
# An unverified seller's shipment, counted under its row's lock (only for unverified sellers).
COUNT_UNVERIFIED = """
UPDATE sellers SET unverified_shipments = unverified_shipments + 1
WHERE id = $1 AND (email_verified_at IS NOT NULL OR unverified_shipments < $2)
RETURNING id
"""
INSERT_SHIPMENT = """
WITH shipment AS (
    INSERT INTO shipments (
        id, tracking_number, seller_id, partner_id, status, content, weight_kg,
        destination_zip, destination_address_line, destination_city, recipient_name,
        recipient_email, recipient_phone, reference, estimated_delivery, version,
        last_sequence, delivery_code_attempts, created_at, updated_at)
    VALUES ($1::uuid, $2, $3, $4, 'placed', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1, 1, 0,
            $15::timestamptz, $15::timestamptz)
), first_event AS (
    INSERT INTO shipment_events (id, shipment_id, sequence, status, location_zip, description,
                                 created_at, occurred_at)
    VALUES (gen_random_uuid(), $1::uuid, 1, 'placed', NULL, 'Shipment created',
            $15::timestamptz, $15::timestamptz)
)
-- Sorted names: concurrent first uses of the same tags wait on each other in one order.
INSERT INTO tags (name) SELECT unnest($16::varchar[]) ON CONFLICT DO NOTHING
"""
# What the API writes with every change: the event-feed row, under a per-seller lock held to
# the commit (feed positions in commit order), and a webhook delivery per enabled endpoint.
_FEED = """
serialized AS (
    SELECT pg_advisory_xact_lock(hashtextextended('events:' || $2::uuid::text, 0))
), feed_event AS (
    INSERT INTO events (id, seller_id, shipment_id, type, data, created_at)
    SELECT $3::uuid, $2::uuid, $1::uuid, $4::varchar, $5::jsonb, $6::timestamptz FROM serialized
)
INSERT INTO outbox_messages (id, kind, shipment_id, payload, status, attempts, next_attempt_at,
                             created_at)
SELECT gen_random_uuid(), 'webhook', $1::uuid,
       jsonb_build_object('endpoint_id', w.id::text, 'event_id', $3::uuid::text),
       'pending', 0, $6::timestamptz, $6::timestamptz
FROM webhook_endpoints w WHERE w.seller_id = $2::uuid AND w.enabled
"""
# $1 shipment, $2 seller, $3 event id, $4 event type, $5 event data, $6 now.
EVENT_FEED = f"WITH {_FEED}"
# A new statement, so that its snapshot sees tags a concurrent create committed meanwhile.
FINISH_CREATE = f"""
WITH linked AS (
    INSERT INTO shipment_tags (shipment_id, tag_id, seller_id, partner_id, created_at)
    SELECT s.id, t.id, s.seller_id, s.partner_id, s.created_at
    FROM shipments s JOIN tags t ON t.name = ANY($7::varchar[]) WHERE s.id = $1::uuid
), email AS (
    INSERT INTO outbox_messages (id, kind, shipment_id, payload, status, attempts,
                                 next_attempt_at, created_at)
    VALUES (gen_random_uuid(), 'email', $1::uuid, $8::jsonb, 'pending', 0, $9::timestamptz,
            $6::timestamptz)
), {_FEED}
"""  # noqa: S608 - fragments of this module, no input
# The shipment a partner reports on, locked, and the partner's own row.
LOCK_FOR_PARTNER = """
SELECT a.token_version AS caller_version, a.status AS partner_status, v.*
FROM partners a
LEFT JOIN LATERAL (
    SELECT s.id, s.seller_id, s.status, s.last_sequence, s.delivery_code_failures
    FROM shipments s
    WHERE s.id = $2 AND s.partner_id = a.id AND a.status = 'approved'
    FOR UPDATE
) v ON true
WHERE a.id = $1
"""
# Under the lock: the next status, version and gapless sequence, the event, and the view. The
# view's timeline is this statement's snapshot, which cannot see the event inserted beside it:
# the caller appends that one.
REPORT = f"""
WITH updated AS (
    UPDATE shipments
    SET status = $2::varchar, version = version + 1, last_sequence = last_sequence + 1,
        updated_at = $3::timestamptz
    WHERE id = $1
    RETURNING *
), event AS (
    INSERT INTO shipment_events (id, shipment_id, sequence, status, location_zip, description,
                                 created_at, occurred_at)
    SELECT gen_random_uuid(), id, last_sequence, $2::varchar, $4::varchar, $5::varchar,
           $3::timestamptz, $3::timestamptz
    FROM updated
)
SELECT {_VIEW_COLUMNS} FROM updated s {_VIEW_JOINS}
"""  # noqa: S608 - fragments of this module, no input
SELLER_BY_EMAIL = "SELECT id, password_hash, token_version FROM sellers WHERE email = $1"

# --- Redis scripts, as the API runs them ----------------------------------------------------

# The seller's create rate, and the hour of its recipient's email (backend/shipments/limits.py).
ADMIT_CREATE = """
redis.call('set', KEYS[1], 0, 'EX', 60, 'NX')
if redis.call('incr', KEYS[1]) > tonumber(ARGV[1]) then
  return {-1, redis.call('ttl', KEYS[1])}
end
local hour = math.max(tonumber(ARGV[3]), tonumber(redis.call('get', KEYS[3]) or '0'))
local window = KEYS[2] .. hour
local position = redis.call('incr', window)
redis.call('expireat', window, (hour + 2) * 3600)
if position >= tonumber(ARGV[2]) then
  redis.call('set', KEYS[3], hour + 1)
  redis.call('expireat', KEYS[3], (hour + 2) * 3600)
end
return {hour, position}
"""
GIVE_BACK = """
if redis.call('exists', KEYS[1]) == 1 then return redis.call('decr', KEYS[1]) end
return 0
"""


class Refused(Exception):
    def __init__(self, status: int, title: str, retry_after: int | None = None) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.retry_after = retry_after


def _problem(error: Refused) -> Response:
    body = {"type": "about:blank", "title": error.title, "status": error.status}
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return Response(json.dumps(body), error.status, headers, "application/problem+json")


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(content, status, headers, media_type="application/json")


def _digest(subject: str) -> str:
    return hashlib.sha256(subject.encode()).hexdigest()[:32]


# --- authentication ---------------------------------------------------------------------------


async def _token(request: Request, wanted: str) -> tuple[uuid.UUID, int]:
    """(account id, token version) of a valid, unrevoked access token of kind `wanted`."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(401, "Unauthorized")
    state = request.app.state
    try:
        decoded = jwt.decode_complete(
            token.strip(),
            state.jwt_key,
            algorithms=["HS256"],
            audience=[f"shiptrack:{kind}" for kind in KINDS],
            issuer=state.jwt_issuer,
            options={"require": REQUIRED_CLAIMS},
        )
        claims = decoded["payload"]
        kind, version = claims["kind"], claims["ver"]
        if (
            decoded["header"].get("typ") != "at+jwt"
            or kind not in KINDS
            or claims["aud"] != f"shiptrack:{kind}"
            or isinstance(version, bool)
            or not isinstance(version, int)
        ):
            raise Refused(401, "Unauthorized")
        account_id, jti, issued_at = uuid.UUID(claims["sub"]), str(claims["jti"]), claims["iat"]
    except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
        raise Refused(401, "Unauthorized") from None
    if kind != wanted:
        raise Refused(403, "Forbidden")
    revoked, retired = await state.redis.mget(
        f"revoked-jti:{jti}", f"token-version:{kind}:{account_id}"
    )
    if revoked is not None:
        raise Refused(401, "Unauthorized")
    if retired is not None:
        current_version, retired_at = (int(part) for part in retired.split())
        if version < current_version and issued_at <= retired_at:
            raise Refused(401, "Unauthorized")
    return account_id, version


def _check_caller(row: asyncpg.Record | None, version: int) -> asyncpg.Record:
    if row is None or row["caller_version"] != version:
        raise Refused(401, "Unauthorized")
    return row


# --- the views --------------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _event(
    sequence: int,
    status: str,
    location_zip: str | None,
    description: str | None,
    at: datetime,
    livemode: bool,
    occurred_at: datetime | None = None,
    city: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
    failure_reason: str | None = None,
    note: str | None = None,
    *,
    public: bool = False,
) -> dict[str, Any]:
    """A timeline event as the API shows it: to anyone (`public`: no note, no coordinates),
    or to its seller and partner."""
    has_place = location_zip is not None or city is not None or lat is not None
    event: dict[str, Any] = {
        "sequence": sequence,
        "status": status,
        "occurred_at": _iso(occurred_at or at),
        "location_zip": location_zip,
        "location": {
            "zip_code": location_zip,
            "city": city,
            "lat": None if public else lat,
            "lon": None if public else lon,
        }
        if has_place
        else None,
        "failure_reason": failure_reason,
        "description": description,
        "created_at": _iso(at),
        "livemode": livemode,
    }
    if not public:
        event["note"] = note
    return event


def _shipment(row: Any, base_url: str) -> dict[str, Any]:
    """The seller's view of a shipment, as the API serializes it."""
    number = row["tracking_number"]
    rating = row["review_rating"]
    return {
        "id": str(row["id"]),
        "tracking_number": number,
        "status": row["status"],
        "content": row["content"],
        "weight_kg": row["weight_kg"],
        "destination": {
            "zip_code": row["destination_zip"],
            "address_line": row["destination_address_line"],
            "city": row["destination_city"],
        },
        "recipient": {
            "name": row["recipient_name"],
            "email": row["recipient_email"],
            "phone": row["recipient_phone"],
        },
        "tags": list(row["tags"]),
        "reference": row["reference"],
        "seller_id": str(row["seller_id"]),
        "partner": {"id": str(row["partner_id"]), "name": row["partner_name"]},
        "estimated_delivery": _iso(row["estimated_delivery"]),
        "version": row["version"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "tracking_url": f"{base_url}/t/{number}",
        "recipient_redacted": False,
        "review": None
        if rating is None
        else {
            "rating": rating,
            "comment": row["review_comment"],
            "created_at": _iso(row["review_created_at"]),
        },
        "livemode": row["livemode"],
        "attempts": row["delivery_attempts"],
        "timeline": [_event(*event) for event in row["timeline"] or ()],
    }


async def _record_feed(
    conn: asyncpg.Connection, sql: str, shipment: dict[str, Any], event_type: str, *extra: Any
) -> None:
    """Run EVENT_FEED (or FINISH_CREATE, with its `extra` arguments) for the changed shipment."""
    data = json.dumps(
        {
            "shipment": {k: v for k, v in shipment.items() if k != "timeline"},
            "timeline_event": shipment["timeline"][-1],
        },
        separators=(",", ":"),
    )
    shipment_id, seller_id = uuid.UUID(shipment["id"]), uuid.UUID(shipment["seller_id"])
    now = datetime.now(UTC)
    await conn.execute(sql, shipment_id, seller_id, uuid.uuid4(), event_type, data, now, *extra)


async def _announce(request: Request, shipment: dict[str, Any]) -> None:
    """After the commit: the new event, in its public fields, to the shipment's open streams."""
    newest = shipment["timeline"][-1]
    location = newest["location"] and {**newest["location"], "lat": None, "lon": None}
    public = {key: value for key, value in newest.items() if key != "note"}
    message = json.dumps({**public, "location": location})
    await request.app.state.redis.publish(f"shipment-events:{shipment['id']}", message)


# --- routes -----------------------------------------------------------------------------------


async def get_shipment(request: Request) -> Response:
    try:
        shipment_id = uuid.UUID(request.path_params["shipment_id"])
        seller_id, version = await _token(request, "seller")
        row = _check_caller(
            await request.app.state.pool.fetchrow(READ_ONE, seller_id, shipment_id), version
        )
        if row["id"] is None:
            raise Refused(404, "Not Found")
    except ValueError:
        return _problem(Refused(422, "Unprocessable Content"))
    except Refused as error:
        return _problem(error)
    body = _shipment(row, request.app.state.base_url)
    return _json(body, headers={"ETag": f'"{body["version"]}"'})


async def list_shipments(request: Request) -> Response:
    try:
        limit = int(request.query_params.get("limit", "20"))
        if not 1 <= limit <= 100:
            raise ValueError(limit)
        seller_id, version = await _token(request, "seller")
        rows = await request.app.state.pool.fetch(READ_PAGE, seller_id, limit + 1)
        _check_caller(rows[0] if rows else None, version)
    except ValueError:
        return _problem(Refused(422, "Unprocessable Content"))
    except Refused as error:
        return _problem(error)
    found = [row for row in rows if row["id"] is not None]
    base_url = request.app.state.base_url
    items = [_shipment(row, base_url) for row in found[:limit]]
    next_cursor = None
    if len(found) > limit:
        last = found[limit - 1]
        raw = f"{last['created_at'].isoformat()}|{last['id']}".encode()
        next_cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return _json({"items": items, "next_cursor": next_cursor})


async def track(request: Request) -> Response:
    number = request.path_params["tracking_number"]
    if not TRACKING_NUMBER.fullmatch(number):
        return _problem(Refused(422, "Unprocessable Content"))
    row = await request.app.state.pool.fetchrow(TRACK, number.upper())
    if row is None:
        return _problem(Refused(404, "Not Found"))
    return _json(
        {
            "tracking_number": row["tracking_number"],
            "status": row["status"],
            "estimated_delivery": _iso(row["estimated_delivery"]),
            "destination": {"zip_code": row["destination_zip"], "city": row["destination_city"]},
            "partner": {"name": row["partner_name"]},
            "timeline": [_event(*event, public=True) for event in row["timeline"] or ()],
            "timeline_total": row["last_sequence"],
            "livemode": row["livemode"],
        }
    )


async def _admit_create(request: Request, seller_id: uuid.UUID) -> datetime | None:
    """The API's per-seller create rate (429) and recipient-email budget: when the email may go
    (None: now)."""
    state = request.app.state
    digest = _digest(str(seller_id))
    current_hour = int(time.time()) // 3600
    hour, position = await state.admit_create(
        keys=[
            f"ratelimit:shipment_creates:{digest}",
            f"ratelimit:recipient_emails:{digest}:",
            f"ratelimit:recipient_emails:{digest}:open",
        ],
        args=[state.creates_per_minute, state.emails_per_hour, current_hour],
    )
    if hour == -1:
        raise Refused(429, "Too Many Requests", position)
    if hour <= current_hour:
        return None
    return datetime.fromtimestamp(hour * 3600 + (position - 1) * 3600 / state.emails_per_hour, UTC)


class _ClaimAgain(Exception):
    """The candidate partner filled up while this create waited for it, and another has room."""


async def _create(
    request: Request,
    conn: asyncpg.Connection,
    body: dict[str, Any],
    seller_id: uuid.UUID,
    version: int,
    email_at: datetime | None,
) -> dict[str, Any]:
    """The create's statements, in the caller's transaction."""
    state = request.app.state
    destination, recipient = body["destination"], body["recipient"]
    zip_code, email = destination["zip_code"], recipient["email"].lower()
    tags = sorted({tag.lower() for tag in body.get("tags", [])})
    caller = _check_caller(
        await conn.fetchrow(CLAIM_PARTNER, seller_id, zip_code, version), version
    )
    if caller["partner_id"] is None:
        # The failed candidate stays locked: roll back (raising), then try again afresh.
        raise _ClaimAgain() if caller["room"] else Refused(409, "Conflict")
    if caller["email_verified_at"] is None and not await conn.fetchval(
        COUNT_UNVERIFIED, seller_id, state.unverified_limit
    ):
        raise Refused(403, "Forbidden")
    shipment_id, now = uuid.uuid4(), datetime.now(UTC)
    number = "".join(secrets.choice(TRACKING_ALPHABET) for _ in range(14))
    eta = now + state.transit
    values = {
        "id": shipment_id,
        "tracking_number": number,
        "status": "placed",
        "content": body["content"],
        "weight_kg": float(body["weight_kg"]),
        "destination_zip": zip_code,
        "destination_address_line": destination.get("address_line"),
        "destination_city": destination.get("city"),
        "recipient_name": recipient["name"],
        "recipient_email": email,
        "recipient_phone": recipient.get("phone"),
        "tags": tags,
        "reference": body.get("reference"),
        "seller_id": seller_id,
        "partner_id": caller["partner_id"],
        "partner_name": caller["partner_name"],
        "estimated_delivery": eta,
        "version": 1,
        "created_at": now,
        "updated_at": now,
        "review_rating": None,
        "livemode": True,
        "delivery_attempts": 0,
        "timeline": [(1, "placed", None, DESCRIPTIONS["placed"], now, True)],
    }
    await conn.execute(
        INSERT_SHIPMENT,
        *(values[name] for name in _INSERTED),
        eta,
        now,
        tags,
    )
    # The response is what was just written: nothing to read back.
    shipment = _shipment(values, state.base_url)
    message = {
        "template": "shipment_created",
        "to": email,
        "recipient_name": recipient["name"],
        "tracking_number": number,
        "tracking_url": shipment["tracking_url"],
        "content": body["content"],
        "partner_name": caller["partner_name"],
        "seller_name": caller["caller_name"],
        "estimated_delivery_day": f"{eta:%A} {eta.day} {eta:%B %Y}",
        "redact_after_send": [],
    }
    await _record_feed(
        conn,
        FINISH_CREATE,
        shipment,
        "shipment.created",
        tags,
        json.dumps(message, separators=(",", ":")),
        max(now, email_at) if email_at else now,
    )
    return shipment


# INSERT_SHIPMENT's $1-$13, then $14 the ETA, $15 now, $16 the tags.
_INSERTED = (
    "id",
    "tracking_number",
    "seller_id",
    "partner_id",
    "content",
    "weight_kg",
    "destination_zip",
    "destination_address_line",
    "destination_city",
    "recipient_name",
    "recipient_email",
    "recipient_phone",
    "reference",
)


async def create_shipment(request: Request) -> Response:
    try:
        body = await request.json()
        weight = body["weight_kg"]
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0 < weight <= 100:
            raise ValueError(weight)
        seller_id, version = await _token(request, "seller")
        email_at = await _admit_create(request, seller_id)
        async with request.app.state.pool.acquire() as conn:
            for _ in range(10):
                try:
                    async with conn.transaction():
                        shipment = await _create(request, conn, body, seller_id, version, email_at)
                    break
                except _ClaimAgain:
                    continue
            else:
                raise Refused(409, "Conflict")
        await _announce(request, shipment)
    except (ValueError, KeyError, TypeError, AttributeError):
        return _problem(Refused(422, "Unprocessable Content"))
    except Refused as error:
        return _problem(error)
    headers = {"ETag": f'"{shipment["version"]}"', "Location": f"/shipments/{shipment['id']}"}
    return _json(shipment, 201, headers)


async def update_shipment(request: Request) -> Response:
    state = request.app.state
    try:
        shipment_id = uuid.UUID(request.path_params["shipment_id"])
        change = await request.json()
        target, zip_code, note = change["status"], change.get("location_zip"), change.get("note")
        if target not in DESCRIPTIONS or not (note is None or isinstance(note, str)):
            raise ValueError(target)  # the floor serves the statuses that need no code
        partner_id, version = await _token(request, "partner")
        async with state.pool.acquire() as conn, conn.transaction():
            locked = _check_caller(
                await conn.fetchrow(LOCK_FOR_PARTNER, partner_id, shipment_id), version
            )
            if locked["partner_status"] == "suspended":
                raise Refused(403, "Forbidden")
            if locked["id"] is None:
                raise Refused(404, "Not Found")
            if target not in PARTNER_NEXT.get(locked["status"], ()):
                raise Refused(409, "Conflict")
            if locked["delivery_code_failures"] >= state.max_code_failures:
                raise Refused(409, "Conflict")  # locked: it may only be returned
            if locked["last_sequence"] >= state.max_events - 1:
                raise Refused(409, "Conflict")  # the last place is kept for the final status
            now = datetime.now(UTC)
            description = note or DESCRIPTIONS[target]
            row = await conn.fetchrow(REPORT, shipment_id, target, now, zip_code, description)
            shipment = _shipment(row, state.base_url)
            sequence = locked["last_sequence"] + 1
            shipment["timeline"].append(
                _event(sequence, target, zip_code, description, now, livemode=True)
            )
            await _record_feed(conn, EVENT_FEED, shipment, "shipment.updated")
        await _announce(request, shipment)
    except (ValueError, KeyError, TypeError):
        return _problem(Refused(422, "Unprocessable Content"))
    except Refused as error:
        return _problem(error)
    return _json(shipment, headers={"ETag": f'"{shipment["version"]}"'})


async def _hit(redis: Redis, name: str, subject: str, limit: int, window: int) -> None:
    """One attempt in a fixed window (backend/rate_limit.py)."""
    key = f"ratelimit:{name}:{_digest(subject)}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=window, nx=True)
        pipe.incr(key)
        pipe.ttl(key)
        _, count, ttl = await pipe.execute()
    if count > limit:
        raise Refused(429, "Too Many Requests", ttl if ttl > 0 else window)


async def _hash_check(request: Request, password: bytes, stored: bytes) -> bool:
    state = request.app.state
    if state.hashes_admitted >= state.hash_capacity:
        raise Refused(503, "Service Unavailable", 1)
    state.hashes_admitted += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(
            state.hashing, bcrypt.checkpw, password, stored
        )
    finally:
        state.hashes_admitted -= 1


async def log_in(request: Request) -> Response:
    state = request.app.state
    try:
        form = await request.form()
        email = str(form["username"]).lower()
        password = str(form["password"]).encode()
        redis: Redis = state.redis
        ip = request.client.host if request.client else "unknown"
        window = state.settings.rate_limit_window_seconds
        await _hit(redis, "token-ip", ip, state.settings.token_attempts_per_ip, window)
        account_and_ip = f"{email}\n{ip}"
        limit = state.settings.token_attempts_per_account_and_ip
        await _hit(redis, "token-seller-ip", account_and_ip, limit, window)
        limit = state.settings.token_attempts_per_account
        await _hit(redis, "token-seller", email, limit, window)
        account = await state.pool.fetchrow(SELLER_BY_EMAIL, email)
        stored = account["password_hash"].encode() if account else state.decoy_hash
        if not await _hash_check(request, password, stored) or account is None:
            raise Refused(401, "Unauthorized")
        await state.give_back(keys=[f"ratelimit:token-seller:{_digest(email)}"])
        await state.give_back(keys=[f"ratelimit:token-seller-ip:{_digest(account_and_ip)}"])
        now = datetime.now(UTC)
        claims = {
            "sub": str(account["id"]),
            "kind": "seller",
            "aud": "shiptrack:seller",
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + timedelta(seconds=state.settings.access_token_ttl_seconds),
            "iss": state.jwt_issuer,
            "ver": account["token_version"],
        }
        token = jwt.encode(claims, state.jwt_key, algorithm="HS256", headers={"typ": "at+jwt"})
    except (KeyError, ValueError):
        return _problem(Refused(422, "Unprocessable Content"))
    except Refused as error:
        return _problem(error)
    lifetime = state.settings.access_token_ttl_seconds
    return _json({"access_token": token, "token_type": "bearer", "expires_in": lifetime})


def _redis(settings: Settings, url: str) -> Redis:
    """The API's client settings (backend/redis_client.py): a blocking pool, per-command
    deadlines, one retry on a fresh connection."""
    retried = [redis_errors.ConnectionError, redis_errors.TimeoutError]
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), retries=1, supported_errors=tuple(retried)),
        retry_on_error=retried,
        health_check_interval=30,
        decode_responses=True,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    return Redis.from_pool(pool)


async def _keep_session(_conn: asyncpg.Connection) -> None:
    return None


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings = Settings()
    state = app.state
    state.settings = settings
    state.jwt_key = settings.jwt_secret_key.get_secret_value()
    state.jwt_issuer = settings.jwt_issuer
    state.base_url = settings.public_base_url.rstrip("/")
    state.transit = timedelta(days=settings.default_transit_days)
    state.creates_per_minute = settings.shipments_per_seller_per_minute
    state.emails_per_hour = settings.recipient_emails_per_seller_per_hour
    state.unverified_limit = settings.unverified_seller_shipment_limit
    state.max_events = settings.max_events_per_shipment
    state.max_code_failures = settings.delivery_code_max_failures_per_shipment
    state.hashing = ThreadPoolExecutor(settings.password_hash_concurrency, "password-hashing")
    state.hash_capacity = settings.password_hash_concurrency + settings.password_hash_queue_limit
    state.hashes_admitted = 0
    rounds = settings.bcrypt_rounds
    # An unknown email costs a hash too: against this, computed once.
    state.decoy_hash = await asyncio.get_running_loop().run_in_executor(
        state.hashing, bcrypt.hashpw, b"decoy password for unknown accounts", bcrypt.gensalt(rounds)
    )
    # The API's pool bound, connect and command deadlines and server settings (backend/db.py).
    database_url = os.environ["FLOOR_DATABASE_URL"].replace(
        "postgresql+asyncpg://", "postgresql://"
    )
    state.pool = await asyncpg.create_pool(
        database_url,
        min_size=min(10, settings.db_pool_size),
        max_size=settings.db_pool_size,
        timeout=settings.db_connect_timeout_seconds,
        command_timeout=settings.db_command_timeout_seconds,
        server_settings={
            "statement_timeout": str(settings.db_statement_timeout_ms),
            "idle_in_transaction_session_timeout": str(settings.db_statement_timeout_ms * 6),
            "application_name": "shiptrack-floor",
        },
        # The floor changes no session state (no SET, LISTEN, cursors or session locks), so a
        # connection given back needs no reset query: asyncpg's default costs a round trip
        # per release. An open transaction is still rolled back.
        reset=_keep_session,
    )
    state.redis = _redis(settings, os.environ["FLOOR_REDIS_URL"])
    state.admit_create = state.redis.register_script(ADMIT_CREATE)
    state.give_back = state.redis.register_script(GIVE_BACK)
    try:
        yield
    finally:
        await state.pool.close()
        await state.redis.aclose()
        state.hashing.shutdown(wait=False, cancel_futures=True)


app = Starlette(
    routes=[
        Route("/shipments", list_shipments, methods=["GET"]),
        Route("/shipments", create_shipment, methods=["POST"]),
        Route("/shipments/{shipment_id}", get_shipment, methods=["GET"]),
        Route("/shipments/{shipment_id}", update_shipment, methods=["PATCH"]),
        Route("/track/{tracking_number}", track, methods=["GET"]),
        Route("/seller/token", log_in, methods=["POST"]),
    ],
    lifespan=lifespan,
)
