"""The benchmark's "floor": the least code that answers the same requests with the same SQL.

Starlette + asyncpg + redis, no ORM, no validation layer, no dependency injection, no middleware.
For each request it does the work the API does, and no more:

- authentication: decode the bearer JWT (HS256, typ at+jwt, audience per account kind, the same
  required claims), Redis `MGET revoked-jti:<jti> token-version:<kind>:<id>`, then the
  account's token version and name by primary key, as the API checks its caller;
- reads, create and status update: the API's own statements, compiled by floor_sql.py from the
  API's modules and run verbatim (FLOOR_SQL names the JSON file), in the API's order (the
  caller, the partner claim in a savepoint, the inserts, the tags, the view read back, the
  outbox row, the per-seller advisory lock, the event rows, the webhook lookup) and, after the
  commit, the live-update message;
- login: the same Redis window counters, the account by email, bcrypt on a thread, a new JWT.
  At most PASSWORD_HASH_CONCURRENCY hashes run at once, the bound the API keeps so that logins
  never take the event loop's core (run.sh gives both apps the API's default);
- the clients: PostgreSQL and Redis with the API's settings (the pool bound, the per-command
  deadlines), read from the same environment.

Run: FLOOR_DATABASE_URL=postgresql://... FLOOR_REDIS_URL=redis://... FLOOR_SQL=floor_sql.json
     ENVIRONMENT=dev JWT_SECRET_KEY=... uvicorn --app-dir bench floor:app (from the repository
     root, which puts `backend` on the path)
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

import asyncpg
import bcrypt
import jwt
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend.config import Settings
from backend.redis_client import create_redis

KINDS = ("seller", "partner")
REQUIRED_CLAIMS = ["sub", "kind", "aud", "jti", "iat", "exp", "iss", "ver"]
KEY = os.environ.get("JWT_SECRET_KEY", "dev-only-insecure-key-change-me-0123456789abcdef")
ISSUER = os.environ.get("JWT_ISSUER", "shiptrack")
PUBLIC_BASE_URL = os.environ.get("PUBLIC_BASE_URL", "http://127.0.0.1:8000")
TOKEN_LIFETIME = timedelta(minutes=60)
TRACKING_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"

# Only logins read an account by email; everything else runs the API's statements (FLOOR_SQL).
SELLER_BY_EMAIL = "SELECT id, password_hash, token_version FROM sellers WHERE email = $1"
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


def _sql(request: Request, *path: str) -> tuple[str, list[list[Any]]]:
    entry = request.app.state.sql
    for key in path:
        entry = entry[key]
    return entry["sql"], entry["params"]


def _args(params: list[list[Any]], **values: Any) -> list[Any]:
    """The values for `$1, $2, ...`: by name, or the literal the statement was written with."""
    return [values[name] if given else literal for name, given, literal in params]


async def _run(
    request: Request, conn: asyncpg.Connection, method: str, *path: str, **values: Any
) -> Any:
    sql, params = _sql(request, *path)
    return await getattr(conn, method)(sql, *_args(params, **values))


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


async def _not_revoked(request: Request, kind: str, account_id: uuid.UUID, jti: str) -> None:
    # One MGET, as the API reads the token's revocation and the account's reset marker.
    revoked, _reset = await request.app.state.redis.mget(
        f"revoked-jti:{jti}", f"token-version:{kind}:{account_id}"
    )
    if revoked is not None:
        raise Refused(401, "Unauthorized")


async def _caller(
    request: Request, conn: asyncpg.Connection, wanted: str | None = None
) -> tuple[str, uuid.UUID, str]:
    """(kind, account id, name): the token, then the account's token version and name by
    primary key, as the API checks its caller."""
    kind, account_id, jti, version = _claims(request)
    if wanted is not None and kind != wanted:
        raise Refused(403, "Forbidden")
    await _not_revoked(request, kind, account_id, jti)
    account = await _run(request, conn, "fetchrow", "caller", kind, id=account_id)
    if account is None or account["token_version"] != version:
        raise Refused(401, "Unauthorized")
    return kind, account_id, account["name"]


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
    row = await _run(
        request, conn, "fetchrow", "one", kind, shipment_id=shipment_id, owner_id=owner_id
    )
    return None if row is None else _render(row)


async def _queue_email(
    request: Request, conn: asyncpg.Connection, shipment_id: uuid.UUID, payload: dict[str, Any]
) -> None:
    row = {"id": uuid.uuid4(), "kind": "email", "shipment_id": shipment_id}
    payload = {**payload, "redact_after_send": []}
    await _run(
        request,
        conn,
        "execute",
        "queue_message",
        **row,
        payload=json.dumps(payload),
        now=datetime.now(UTC),
    )


async def _publish(
    request: Request, conn: asyncpg.Connection, shipment: dict[str, Any], types: Sequence[str]
) -> None:
    """The API's event-feed write: serialize per seller, store the events, find endpoints."""
    seller_id = uuid.UUID(shipment["seller_id"])
    await _run(request, conn, "execute", "serialize_seller_events", key=f"events:{seller_id}")
    data = json.dumps(
        {
            "shipment": {k: v for k, v in shipment.items() if k != "timeline"},
            "timeline_event": shipment["timeline"][-1],
        }
    )
    now = datetime.now(UTC)
    sql, params = _sql(request, "record_event")
    rows = [
        _args(
            params,
            id=uuid.uuid4(),
            seller_id=seller_id,
            shipment_id=uuid.UUID(shipment["id"]),
            type=event_type,
            data=data,
            created_at=now,
        )
        for event_type in types
    ]
    await conn.executemany(sql, rows)
    await _run(request, conn, "fetch", "enabled_endpoints", seller_id=seller_id)


async def _announce(request: Request, shipment: dict[str, Any]) -> None:
    """After the commit, the live-update message the API publishes for open event streams."""
    message = json.dumps(shipment["timeline"][-1])
    await request.app.state.redis.publish(f"shipment-events:{shipment['id']}", message)


async def _claim_partner(request: Request, conn: asyncpg.Connection, zip_code: str) -> Any:
    """The API's claim: one candidate per attempt, each in a savepoint."""
    for _ in range(10):
        async with conn.transaction():
            partner = await _run(request, conn, "fetchrow", "claim_partner", zip=zip_code)
        if partner is not None:
            return partner
        if not await _run(request, conn, "fetchval", "partner_with_room", zip=zip_code):
            return None
    return None


# --- routes -----------------------------------------------------------------------------------


async def get_shipment(request: Request) -> Response:
    try:
        shipment_id = uuid.UUID(request.path_params["shipment_id"])
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            kind, account_id, _ = await _caller(request, conn)
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
            kind, account_id, _ = await _caller(request, conn)
            # One more than asked for tells whether another page follows, as in the API.
            rows = await _run(
                request, conn, "fetch", "page", kind, owner_id=account_id, limit=limit + 1
            )
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
            _, seller_id, seller_name = await _caller(request, conn, "seller")
            partner = await _claim_partner(request, conn, destination["zip_code"])
            if partner is None:
                raise Refused(409, "Conflict")
            shipment_id, now = uuid.uuid4(), datetime.now(UTC)
            number = "".join(secrets.choice(TRACKING_ALPHABET) for _ in range(14))
            await _run(
                request,
                conn,
                "execute",
                "insert_shipment",
                id=shipment_id,
                tracking_number=number,
                seller_id=seller_id,
                partner_id=partner["id"],
                status="placed",
                content=body["content"],
                weight_kg=float(body["weight_kg"]),
                destination_zip=destination["zip_code"],
                destination_address_line=destination.get("address_line"),
                destination_city=destination.get("city"),
                recipient_name=recipient["name"],
                recipient_email=recipient["email"].lower(),
                recipient_phone=recipient.get("phone"),
                reference=body.get("reference"),
                estimated_delivery=now + timedelta(days=3),
                version=1,
                last_sequence=1,
                delivery_code_hash=None,
                delivery_code_expires_at=None,
                delivery_code_attempts=0,
                created_at=now,
                updated_at=now,
            )
            await _run(
                request,
                conn,
                "execute",
                "append_event",
                id=uuid.uuid4(),
                shipment_id=shipment_id,
                sequence=1,
                status="placed",
                location_zip=None,
                description="Shipment created",
                created_at=now,
            )
            if tags:
                await _run(request, conn, "execute", "create_tags", names=tags)
                await _run(
                    request, conn, "execute", "link_tags", shipment_id=shipment_id, names=tags
                )
            shipment = await _view(request, conn, shipment_id, "seller", seller_id)
            assert shipment is not None
            await _queue_email(
                request,
                conn,
                shipment_id,
                {
                    "template": "shipment_created",
                    "to": recipient["email"],
                    "recipient_name": recipient["name"],
                    "tracking_number": number,
                    "tracking_url": shipment["tracking_url"],
                    "content": body["content"],
                    "partner_name": partner["name"],
                    "seller_name": seller_name,
                    "estimated_delivery_day": shipment["estimated_delivery"],
                },
            )
            await _publish(request, conn, shipment, ["shipment.created"])
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
            _, partner_id, _ = await _caller(request, conn, "partner")
            locked = await _run(
                request,
                conn,
                "fetchrow",
                "lock_for_partner",
                shipment_id=shipment_id,
                owner_id=partner_id,
            )
            if locked is None:
                raise Refused(404, "Not Found")
            if target not in PARTNER_NEXT.get(locked["status"], set()):
                raise Refused(409, "Conflict")
            now, sequence = datetime.now(UTC), locked["last_sequence"] + 1
            await _run(
                request,
                conn,
                "execute",
                "save_shipment",
                shipment_id=shipment_id,
                status=target,
                estimated_delivery=locked["estimated_delivery"],
                version=locked["version"] + 1,
                last_sequence=sequence,
                delivery_code_hash=locked["delivery_code_hash"],
                delivery_code_expires_at=locked["delivery_code_expires_at"],
                delivery_code_attempts=locked["delivery_code_attempts"],
                updated_at=now,
            )
            await _run(
                request,
                conn,
                "execute",
                "append_event",
                id=uuid.uuid4(),
                shipment_id=shipment_id,
                sequence=sequence,
                status=target,
                location_zip=zip_code,
                description=change.get("note") or "In transit",
                created_at=now,
            )
            shipment = await _view(request, conn, shipment_id, "seller", locked["seller_id"])
            assert shipment is not None
            await _publish(request, conn, shipment, ["shipment.updated"])
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
            account = await conn.fetchrow(SELLER_BY_EMAIL, email)
        stored = account["password_hash"].encode() if account else bcrypt.gensalt()
        async with request.app.state.hashing:
            matches = await asyncio.to_thread(bcrypt.checkpw, password, stored)
        if not matches or account is None:
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
    app.state.hashing = asyncio.Semaphore(int(os.environ.get("PASSWORD_HASH_CONCURRENCY", "1")))
    # The API's client settings (backend/db.py, backend/redis_client.py): the same pool bound
    # and per-command deadlines, which keep a hung PostgreSQL or Redis from hanging a request.
    settings = Settings()
    app.state.pool = await asyncpg.create_pool(
        database_url,
        min_size=min(10, settings.db_pool_size),
        max_size=settings.db_pool_size,
        timeout=settings.db_connect_timeout_seconds,
        command_timeout=settings.db_command_timeout_seconds,
        server_settings={
            "statement_timeout": str(settings.db_statement_timeout_ms),
            "idle_in_transaction_session_timeout": str(settings.db_statement_timeout_ms * 6),
        },
    )
    app.state.redis = create_redis(settings, os.environ["FLOOR_REDIS_URL"])
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
