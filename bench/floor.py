"""The benchmark's "floor": the least code that answers the same reads with the same SQL.

Starlette + asyncpg + redis, no ORM and no validation layer. For every request it does what the
API does: decode the bearer JWT (HS256, typ at+jwt, audience per account kind, the same required
claims), ask Redis whether the jti is revoked (EXISTS revoked-jti:<jti>), load the account by
primary key and compare its token_version, then run the shipment queries (the shipments with the
partner and review joined, the timeline, the tags) and write JSON.

Run: FLOOR_DATABASE_URL=postgresql://... FLOOR_REDIS_URL=redis://... JWT_SECRET_KEY=...
     uvicorn --app-dir bench floor:app
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
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

_SHIPMENT_COLUMNS = """
    s.id, s.tracking_number, s.seller_id, s.partner_id, s.status, s.content, s.weight_kg,
    s.destination_zip, s.destination_address_line, s.destination_city, s.recipient_name,
    s.recipient_email, s.recipient_phone, s.reference, s.estimated_delivery, s.version,
    s.last_sequence, s.delivery_code_hash, s.delivery_code_expires_at, s.delivery_code_attempts,
    s.created_at, s.updated_at,
    p.id AS p_id, p.name AS p_name, p.email AS p_email, p.password_hash AS p_password_hash,
    p.serviceable_zip_codes AS p_zips, p.max_handling_capacity AS p_capacity,
    p.active_shipments AS p_active, p.email_verified_at AS p_verified,
    p.token_version AS p_token_version, p.created_at AS p_created_at,
    r.id AS r_id, r.shipment_id AS r_shipment_id, r.rating AS r_rating,
    r.comment AS r_comment, r.created_at AS r_created_at
    FROM shipments s
    JOIN partners p ON p.id = s.partner_id
    LEFT OUTER JOIN reviews r ON s.id = r.shipment_id
"""
GET_ONE = f"SELECT {_SHIPMENT_COLUMNS} WHERE s.id = $1 AND s.{{owner}} = $2"
PAGE = (
    f"SELECT {_SHIPMENT_COLUMNS} WHERE s.{{owner}} = $1 "
    "ORDER BY s.created_at DESC, s.id DESC LIMIT $2"
)
TIMELINE = (
    "SELECT shipment_id, id, sequence, status, location_zip, description, created_at "
    "FROM shipment_events WHERE shipment_id = ANY($1::uuid[]) ORDER BY sequence"
)
TAGS = (
    "SELECT st.shipment_id, t.id, t.name FROM tags t "
    "JOIN shipment_tags st ON t.id = st.tag_id WHERE st.shipment_id = ANY($1::uuid[])"
)
ACCOUNT = {
    "seller": (
        "SELECT id, name, email, password_hash, zip_code, address, email_verified_at, "
        "token_version, created_at, updated_at FROM sellers WHERE id = $1"
    ),
    "partner": (
        "SELECT id, name, email, password_hash, serviceable_zip_codes, max_handling_capacity, "
        "active_shipments, email_verified_at, token_version, created_at FROM partners "
        "WHERE id = $1"
    ),
}


class Unauthorized(Exception):
    pass


def _problem(status: int, title: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status},
        status_code=status,
        media_type="application/problem+json",
    )


def _claims(request: Request) -> tuple[str, uuid.UUID, str, int]:
    """(kind, account id, jti, token version) of a valid access token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized
    token = token.strip()
    try:
        if jwt.get_unverified_header(token).get("typ") != "at+jwt":
            raise Unauthorized
        payload = jwt.decode(
            token,
            KEY,
            algorithms=["HS256"],
            audience=[f"shiptrack:{kind}" for kind in KINDS],
            issuer=ISSUER,
            options={"require": REQUIRED_CLAIMS},
        )
        kind = str(payload["kind"])
        if kind not in KINDS or payload["aud"] != f"shiptrack:{kind}":
            raise Unauthorized
        version = payload["ver"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise Unauthorized
        return kind, uuid.UUID(payload["sub"]), str(payload["jti"]), version
    except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
        raise Unauthorized from None


async def _authenticate(request: Request, conn: asyncpg.Connection) -> tuple[str, uuid.UUID]:
    kind, account_id, jti, version = _claims(request)
    redis: Redis = request.app.state.redis
    if await redis.exists(f"revoked-jti:{jti}"):
        raise Unauthorized
    account = await conn.fetchrow(ACCOUNT[kind], account_id)
    if account is None or account["token_version"] != version:
        raise Unauthorized
    return kind, account_id


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


async def _render(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
    ids = [row["id"] for row in rows]
    timelines: dict[uuid.UUID, list[dict[str, Any]]] = {i: [] for i in ids}
    tags: dict[uuid.UUID, list[str]] = {i: [] for i in ids}
    if ids:
        for event in await conn.fetch(TIMELINE, ids):
            timelines[event["shipment_id"]].append(
                {
                    "sequence": event["sequence"],
                    "status": event["status"],
                    "location_zip": event["location_zip"],
                    "description": event["description"],
                    "created_at": _iso(event["created_at"]),
                }
            )
        for tag in await conn.fetch(TAGS, ids):
            tags[tag["shipment_id"]].append(tag["name"])
    return [
        {
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
            "tags": sorted(tags[row["id"]]),
            "reference": row["reference"],
            "seller_id": str(row["seller_id"]),
            "partner": {"id": str(row["p_id"]), "name": row["p_name"]},
            "estimated_delivery": _iso(row["estimated_delivery"]),
            "version": row["version"],
            "created_at": _iso(row["created_at"]),
            "updated_at": _iso(row["updated_at"]),
            "tracking_url": f"{PUBLIC_BASE_URL}/t/{row['tracking_number']}",
            "review": (
                {
                    "rating": row["r_rating"],
                    "comment": row["r_comment"],
                    "created_at": _iso(row["r_created_at"]),
                }
                if row["r_id"] is not None
                else None
            ),
            "timeline": timelines[row["id"]],
        }
        for row in rows
    ]


def _json(body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), media_type="application/json", headers=headers
    )


async def get_shipment(request: Request) -> Response:
    try:
        shipment_id = uuid.UUID(request.path_params["shipment_id"])
    except ValueError:
        return _problem(422, "Unprocessable Content")
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn, conn.transaction():
        try:
            kind, account_id = await _authenticate(request, conn)
        except Unauthorized:
            return _problem(401, "Unauthorized")
        row = await conn.fetchrow(GET_ONE.format(owner=f"{kind}_id"), shipment_id, account_id)
        if row is None:
            return _problem(404, "Not Found")
        body = (await _render(conn, [row]))[0]
    return _json(body, {"ETag": f'"{body["version"]}"'})


async def list_shipments(request: Request) -> Response:
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        return _problem(422, "Unprocessable Content")
    if not 1 <= limit <= 100:
        return _problem(422, "Unprocessable Content")
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn, conn.transaction():
        try:
            kind, account_id = await _authenticate(request, conn)
        except Unauthorized:
            return _problem(401, "Unauthorized")
        rows = await conn.fetch(PAGE.format(owner=f"{kind}_id"), account_id, limit)
        items = await _render(conn, rows)
    next_cursor = None
    if len(rows) == limit:
        last = rows[-1]
        raw = f"{last['created_at'].astimezone(UTC).isoformat()}|{last['id']}"
        next_cursor = base64.urlsafe_b64encode(raw.encode()).decode()
    return _json({"items": items, "next_cursor": next_cursor})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    database_url = os.environ["FLOOR_DATABASE_URL"].replace(
        "postgresql+asyncpg://", "postgresql://"
    )
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
        Route("/shipments/{shipment_id}", get_shipment, methods=["GET"]),
    ],
    lifespan=lifespan,
)
