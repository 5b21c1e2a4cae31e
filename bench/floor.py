"""The benchmark's "floor": the least code that answers the same requests with the same SQL.

Starlette + asyncpg + redis, no ORM, no validation layer, no dependency injection, no middleware.
For each request it does the work the API does, and no more:

- authentication: decode the bearer JWT (HS256, typ at+jwt, audience per account kind, the same
  required claims), Redis `EXISTS revoked-jti:<jti>`, then the account's token version (reads)
  or the whole account row (writes), as the API loads them;
- reads: the API's own read query, compiled from backend/shipments/views.py by floor_sql.py and
  run verbatim (FLOOR_SQL names the JSON file);
- create and status update: the statements the API's log shows, in its order (the partner
  claim, the inserts, the tags, the view read back, the per-seller advisory lock, the webhook
  lookup, the event row, the outbox row) and, after the commit, the live-update message;
- login: the same Redis window counters, the account by email, bcrypt on a thread, a new JWT.

Run: FLOOR_DATABASE_URL=postgresql://... FLOOR_REDIS_URL=redis://... FLOOR_SQL=floor_sql.json
     JWT_SECRET_KEY=... uvicorn --app-dir bench floor:app
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import bcrypt
import jwt
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

KINDS = ("seller", "partner")
REQUIRED_CLAIMS = ["sub", "kind", "aud", "jti", "iat", "exp", "iss", "ver"]
KEY = os.environ.get("JWT_SECRET_KEY", "dev-only-insecure-key-change-me-0123456789abcdef")
ISSUER = os.environ.get("JWT_ISSUER", "shiptrack")
PUBLIC_BASE_URL = os.environ.get("PUBLIC_BASE_URL", "http://127.0.0.1:8000")
TOKEN_LIFETIME = timedelta(minutes=60)
TRACKING_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"

ACCOUNT = {
    "seller": (
        "SELECT id, name, email, password_hash, zip_code, address, email_verified_at, "
        "token_version, created_at, updated_at FROM sellers WHERE {key} = $1"
    ),
    "partner": (
        "SELECT id, name, email, password_hash, serviceable_zip_codes, max_handling_capacity, "
        "active_shipments, email_verified_at, token_version, created_at, updated_at "
        "FROM partners WHERE {key} = $1"
    ),
}
CLAIM_PARTNER = """
    UPDATE partners SET active_shipments = active_shipments + 1
    WHERE id = (
        SELECT id FROM partners
        WHERE $1 = ANY(serviceable_zip_codes) AND active_shipments < max_handling_capacity
        ORDER BY active_shipments, id LIMIT 1
    )
    AND active_shipments < max_handling_capacity
    RETURNING id, name
"""
INSERT_SHIPMENT = """
    INSERT INTO shipments (id, tracking_number, seller_id, partner_id, status, content, weight_kg,
        destination_zip, destination_address_line, destination_city, recipient_name,
        recipient_email, recipient_phone, reference, estimated_delivery, version, last_sequence,
        delivery_code_hash, delivery_code_expires_at, delivery_code_attempts, created_at,
        updated_at)
    VALUES ($1, $2, $3, $4, 'placed', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1, 1, NULL,
        NULL, 0, $15, $15)
"""
INSERT_EVENT = """
    INSERT INTO shipment_events (id, shipment_id, sequence, status, location_zip, description,
        created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
LOCK_SHIPMENT = """
    SELECT s.id, s.seller_id, s.status, s.version, s.last_sequence, p.name AS partner_name
    FROM shipments s JOIN partners p ON p.id = s.partner_id
    WHERE s.id = $1 AND s.partner_id = $2 FOR UPDATE OF s
"""
UPDATE_SHIPMENT = (
    "UPDATE shipments SET status = $1, version = $2, last_sequence = $3, updated_at = $4 "
    "WHERE id = $5"
)
ADVISORY_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
ENABLED_ENDPOINTS = "SELECT id FROM webhook_endpoints WHERE seller_id = $1 AND enabled"
INSERT_FEED_EVENT = """
    INSERT INTO events (id, seller_id, shipment_id, type, data, created_at)
    VALUES ($1, $2, $3, $4, $5::jsonb, $6)
"""
INSERT_OUTBOX = """
    INSERT INTO outbox_messages (id, kind, shipment_id, payload, status, attempts,
        next_attempt_at, claimed_by, claimed_until, last_error, sent_at, created_at)
    VALUES ($1, 'email', $2, $3::jsonb, 'pending', 0, $4, NULL, NULL, NULL, NULL, $4)
"""
# Partners may scan an in-transit shipment again, or move it on.
PARTNER_NEXT = {
    "placed": {"in_transit"},
    "in_transit": {"in_transit", "out_for_delivery", "returned"},
    "out_for_delivery": {"out_for_delivery", "returned"},
}


class Refused(Exception):
    def __init__(self, status: int, title: str) -> None:
        super().__init__(title)
        self.status = status
        self.title = title


def _problem(error: Refused) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": error.title, "status": error.status},
        status_code=error.status,
        media_type="application/problem+json",
    )


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, separators=(",", ":"))
    return Response(content, status, headers, media_type="application/json")


# --- authentication ---------------------------------------------------------------------------


def _claims(request: Request) -> tuple[str, uuid.UUID, str, int]:
    """(kind, account id, jti, token version) of a valid access token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(401, "Unauthorized")
    try:
        decoded = jwt.decode_complete(
            token.strip(),
            KEY,
            algorithms=["HS256"],
            audience=[f"shiptrack:{kind}" for kind in KINDS],
            issuer=ISSUER,
            options={"require": REQUIRED_CLAIMS},
        )
        payload = decoded["payload"]
        kind = str(payload["kind"])
        version = payload["ver"]
        if (
            decoded["header"].get("typ") != "at+jwt"
            or kind not in KINDS
            or payload["aud"] != f"shiptrack:{kind}"
            or isinstance(version, bool)
            or not isinstance(version, int)
        ):
            raise Refused(401, "Unauthorized")
        return kind, uuid.UUID(payload["sub"]), str(payload["jti"]), version
    except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
        raise Refused(401, "Unauthorized") from None


async def _not_revoked(request: Request, jti: str) -> None:
    if await request.app.state.redis.exists(f"revoked-jti:{jti}"):
        raise Refused(401, "Unauthorized")


async def _caller(request: Request, conn: asyncpg.Connection) -> tuple[str, uuid.UUID]:
    """Reads: the token, then only the account's token version (as the API's current_caller)."""
    kind, account_id, jti, version = _claims(request)
    await _not_revoked(request, jti)
    query = request.app.state.sql["token_version"][kind]["sql"]
    if await conn.fetchval(query, account_id) != version:
        raise Refused(401, "Unauthorized")
    return kind, account_id


async def _account(request: Request, conn: asyncpg.Connection, wanted: str) -> asyncpg.Record:
    """Writes: the token, then the whole account row (as the API's current_seller/partner)."""
    kind, account_id, jti, version = _claims(request)
    if kind != wanted:
        raise Refused(403, "Forbidden")
    await _not_revoked(request, jti)
    account = await conn.fetchrow(ACCOUNT[kind].format(key="id"), account_id)
    if account is None or account["token_version"] != version:
        raise Refused(401, "Unauthorized")
    return account


# --- the shipment view ------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _render(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "tracking_number": row["tracking_number"],
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
        "tracking_url": f"{PUBLIC_BASE_URL}/t/{row['tracking_number']}",
        "review": (
            {
                "rating": row["review_rating"],
                "comment": row["review_comment"],
                "created_at": _iso(row["review_created_at"]),
            }
            if row["review_rating"] is not None
            else None
        ),
        "timeline": [
            {
                "sequence": sequence,
                "status": status,
                "location_zip": location_zip,
                "description": description,
                "created_at": _iso(created_at),
            }
            for sequence, status, location_zip, description, created_at in row["timeline"] or ()
        ],
    }


async def _view(
    request: Request,
    conn: asyncpg.Connection,
    shipment_id: uuid.UUID,
    kind: str,
    owner_id: uuid.UUID,
) -> dict[str, Any] | None:
    row = await conn.fetchrow(request.app.state.sql["one"][kind]["sql"], shipment_id, owner_id)
    return None if row is None else _render(row)


async def _publish(
    conn: asyncpg.Connection, shipment: dict[str, Any], types: Sequence[str]
) -> None:
    """The API's event-feed write: serialize per seller, find endpoints, store the events."""
    seller_id = uuid.UUID(shipment["seller_id"])
    await conn.execute(ADVISORY_LOCK, f"events:{seller_id}")
    await conn.fetch(ENABLED_ENDPOINTS, seller_id)
    data = json.dumps(
        {
            "shipment": {k: v for k, v in shipment.items() if k != "timeline"},
            "timeline_event": shipment["timeline"][-1],
        }
    )
    now = datetime.now(UTC)
    for event_type in types:
        await conn.fetchval(
            INSERT_FEED_EVENT,
            uuid.uuid4(),
            seller_id,
            uuid.UUID(shipment["id"]),
            event_type,
            data,
            now,
        )


async def _announce(request: Request, shipment: dict[str, Any]) -> None:
    """After the commit, the live-update message the API publishes for open event streams."""
    message = json.dumps(shipment["timeline"][-1])
    await request.app.state.redis.publish(f"shipment-events:{shipment['id']}", message)


# --- routes -----------------------------------------------------------------------------------


async def get_shipment(request: Request) -> Response:
    try:
        shipment_id = uuid.UUID(request.path_params["shipment_id"])
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            kind, account_id = await _caller(request, conn)
            body = await _view(request, conn, shipment_id, kind, account_id)
        if body is None:
            raise Refused(404, "Not Found")
    except ValueError:
        return _problem(Refused(422, "Unprocessable Content"))
    except Refused as error:
        return _problem(error)
    return _json(body, headers={"ETag": f'"{body["version"]}"'})


async def list_shipments(request: Request) -> Response:
    try:
        limit = int(request.query_params.get("limit", "20"))
        if not 1 <= limit <= 100:
            raise ValueError(limit)
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            kind, account_id = await _caller(request, conn)
            query = request.app.state.sql["page"][kind]["sql"]
            # One more than asked for tells whether another page follows, as in the API.
            rows = await conn.fetch(query, account_id, limit + 1)
    except ValueError:
        return _problem(Refused(422, "Unprocessable Content"))
    except Refused as error:
        return _problem(error)
    items = [_render(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        raw = f"{last['created_at'].astimezone(UTC).isoformat()}|{last['id']}"
        next_cursor = base64.urlsafe_b64encode(raw.encode()).decode()
    return _json({"items": items, "next_cursor": next_cursor})


async def create_shipment(request: Request) -> Response:
    try:
        body = await request.json()
        destination, recipient = body["destination"], body["recipient"]
        tags = sorted({tag.lower() for tag in body.get("tags", [])})
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            seller = await _account(request, conn, "seller")
            # In a savepoint, as the API claims (asyncpg nests transactions as savepoints).
            async with conn.transaction():
                partner = await conn.fetchrow(CLAIM_PARTNER, destination["zip_code"])
            if partner is None:
                raise Refused(409, "Conflict")
            shipment_id, now = uuid.uuid4(), datetime.now(UTC)
            number = "".join(secrets.choice(TRACKING_ALPHABET) for _ in range(14))
            await conn.execute(
                INSERT_SHIPMENT,
                shipment_id,
                number,
                seller["id"],
                partner["id"],
                body["content"],
                float(body["weight_kg"]),
                destination["zip_code"],
                destination.get("address_line"),
                destination.get("city"),
                recipient["name"],
                recipient["email"].lower(),
                recipient.get("phone"),
                body.get("reference"),
                now + timedelta(days=3),
                now,
            )
            await conn.execute(
                INSERT_EVENT,
                uuid.uuid4(),
                shipment_id,
                1,
                "placed",
                None,
                "Shipment created",
                now,
            )
            await conn.execute("DELETE FROM shipment_tags WHERE shipment_id = $1", shipment_id)
            if tags:
                await conn.execute(
                    "INSERT INTO tags (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                    tags,
                )
                tag_rows = await conn.fetch(
                    "SELECT id, name FROM tags WHERE name = ANY($1::text[])", tags
                )
                await conn.executemany(
                    "INSERT INTO shipment_tags (shipment_id, tag_id) VALUES ($1, $2)",
                    [(shipment_id, row["id"]) for row in tag_rows],
                )
            shipment = await _view(request, conn, shipment_id, "seller", seller["id"])
            assert shipment is not None
            await _publish(conn, shipment, ["shipment.created"])
            payload = {
                "template": "shipment_created",
                "to": recipient["email"],
                "tracking_url": shipment["tracking_url"],
                "partner_name": partner["name"],
                "seller_name": seller["name"],
            }
            await conn.execute(INSERT_OUTBOX, uuid.uuid4(), shipment_id, json.dumps(payload), now)
        await _announce(request, shipment)
    except (ValueError, KeyError, TypeError, AttributeError):
        return _problem(Refused(422, "Unprocessable Content"))
    except Refused as error:
        return _problem(error)
    return _json(shipment, 201, {"ETag": f'"{shipment["version"]}"'})


async def update_shipment(request: Request) -> Response:
    try:
        shipment_id = uuid.UUID(request.path_params["shipment_id"])
        change = await request.json()
        target, zip_code = change["status"], change.get("location_zip")
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            partner = await _account(request, conn, "partner")
            locked = await conn.fetchrow(LOCK_SHIPMENT, shipment_id, partner["id"])
            if locked is None:
                raise Refused(404, "Not Found")
            if target not in PARTNER_NEXT.get(locked["status"], set()):
                raise Refused(409, "Conflict")
            now, sequence = datetime.now(UTC), locked["last_sequence"] + 1
            await conn.execute(
                UPDATE_SHIPMENT, target, locked["version"] + 1, sequence, now, shipment_id
            )
            await conn.execute(
                INSERT_EVENT,
                uuid.uuid4(),
                shipment_id,
                sequence,
                target,
                zip_code,
                change.get("note") or "Scanned",
                now,
            )
            shipment = await _view(request, conn, shipment_id, "seller", locked["seller_id"])
            assert shipment is not None
            await _publish(conn, shipment, ["shipment.updated"])
        await _announce(request, shipment)
    except (ValueError, KeyError, TypeError):
        return _problem(Refused(422, "Unprocessable Content"))
    except Refused as error:
        return _problem(error)
    return _json(shipment, headers={"ETag": f'"{shipment["version"]}"'})


async def _within_window(redis: Redis, key: str, limit: int, window: int = 900) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=window, nx=True)
        pipe.incr(key)
        pipe.ttl(key)
        _, count, _ = await pipe.execute()
    if count > limit:
        raise Refused(429, "Too Many Requests")


def _window_key(name: str, subject: str) -> str:
    return f"ratelimit:{name}:{hashlib.sha256(subject.encode()).hexdigest()[:32]}"


async def log_in(request: Request) -> Response:
    try:
        form = await request.form()
        email = str(form["username"]).lower()
        password = str(form["password"]).encode()
        redis: Redis = request.app.state.redis
        ip = request.client.host if request.client else "unknown"
        limit = request.app.state.login_limit
        await _within_window(redis, _window_key("token-ip", ip), limit)
        await _within_window(redis, _window_key("token-seller", email), limit)
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            account = await conn.fetchrow(ACCOUNT["seller"].format(key="email"), email)
        stored = account["password_hash"].encode() if account else bcrypt.gensalt()
        if not await asyncio.to_thread(bcrypt.checkpw, password, stored) or account is None:
            raise Refused(401, "Unauthorized")
        await redis.decr(_window_key("token-seller", email))
        now = datetime.now(UTC)
        claims = {
            "sub": str(account["id"]),
            "kind": "seller",
            "aud": "shiptrack:seller",
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + TOKEN_LIFETIME,
            "iss": ISSUER,
            "ver": account["token_version"],
        }
        token = jwt.encode(claims, KEY, algorithm="HS256", headers={"typ": "at+jwt"})
    except (KeyError, ValueError):
        return _problem(Refused(422, "Unprocessable Content"))
    except Refused as error:
        return _problem(error)
    lifetime = int(TOKEN_LIFETIME.total_seconds())
    return _json({"access_token": token, "token_type": "bearer", "expires_in": lifetime})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    database_url = os.environ["FLOOR_DATABASE_URL"].replace(
        "postgresql+asyncpg://", "postgresql://"
    )
    app.state.sql = json.loads(Path(os.environ["FLOOR_SQL"]).read_text())  # noqa: ASYNC240
    app.state.login_limit = int(os.environ.get("TOKEN_ATTEMPTS_PER_IP", "10"))
    # The same pool bounds as the API (pool_size 10, max_overflow 10).
    app.state.pool = await asyncpg.create_pool(database_url, min_size=10, max_size=20)
    app.state.redis = Redis.from_url(os.environ["FLOOR_REDIS_URL"])
    try:
        yield
    finally:
        await app.state.pool.close()
        await app.state.redis.aclose()


app = Starlette(
    routes=[
        Route("/shipments", list_shipments, methods=["GET"]),
        Route("/shipments", create_shipment, methods=["POST"]),
        Route("/shipments/{shipment_id}", get_shipment, methods=["GET"]),
        Route("/shipments/{shipment_id}", update_shipment, methods=["PATCH"]),
        Route("/seller/token", log_in, methods=["POST"]),
    ],
    lifespan=lifespan,
)
