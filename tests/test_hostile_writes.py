"""Every write route against the hostile-input corpus: a 4xx problem+json and nothing changed.

The routes are read from the app's OpenAPI document when the tests are collected, so a new
POST/PUT/PATCH/DELETE route is attacked without anyone listing it here. Each request is made by
the right caller (the seller or partner token the operation's `security` names), with path
parameters pointing at real objects that caller owns and every other part of the request valid,
so the hostile part is what reaches body parsing and the handler (not a 401 or a 404). A control
test proves each valid request is accepted.

"Nothing changed" is a fingerprint of every application table (row count and an md5 of the rows)
and of Redis, less the rate-limit counters that refused requests may legitimately bump.

Speed: the routes times the corpus make over a thousand requests, so the module builds one world
(accounts, shipments in each state, a webhook endpoint, reset and review tokens) and saves a copy
of its tables. Each test starts by checking the fingerprint and restores the copy if anything
(an earlier failure, another module) changed it, so every test starts from the same known state.
"""

from __future__ import annotations

import copy
import gzip
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.auth_schemes import API_KEY_AUTH, PARTNER_AUTH, SELLER_AUTH
from backend.config import Settings
from backend.main import create_app
from backend.models import metadata
from tests.conftest import make_settings, running_client
from tests.factories import PASSWORD, create_api_key, partner_body, seller_body
from tests.hostile_corpus import (
    EMAIL_SLOT,
    EXTRA_FIELDS,
    HOSTILE_FORMS,
    JSON,
    PARSE_FAILURE,
    PLACEHOLDER,
    RAW_BODIES,
    Extra,
    Hostile,
    HostileForm,
    RawBody,
    assert_problem,
    value_cases,
)
from tests.servers import serving
from tests.shipments.factories import (
    DESTINATION_ZIP,
    bring_to,
    create_shipment,
    delivery_code,
    make_parties,
    shipment_body,
)

FORM = "application/x-www-form-urlencoded"
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# Rate limits are raised for this module, so a 429 never stands in for the validation error a
# hostile request should get; `test_hostile_requests_are_refused_while_rate_limited` puts them
# back.
RAISED_LIMITS: dict[str, object] = {
    "signups_per_ip": 100_000,
    "token_attempts_per_ip": 100_000,
    "token_attempts_per_account": 100_000,
}
ANY_CLIENT_ERROR = frozenset(range(400, 500))
REFUSED = ANY_CLIENT_ERROR - {429}
SAFETY_SECONDS = 10.0
SNAPSHOT_SCHEMA = "hostile_writes_world"


# --- the write routes, from the OpenAPI document ----------------------------------------------


class BodyKind(StrEnum):
    JSON = "json"
    FORM = "form"  # any other media type the operation declares (a login form)
    NONE = "none"


@dataclass(frozen=True)
class WriteRoute:
    method: str
    path: str
    auth: str | None  # "seller", "partner" or None, from the operation's `security`
    body: BodyKind
    path_params: tuple[str, ...]
    header_params: tuple[str, ...]
    body_schema: Mapping[str, Any] | None

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def content_type(self) -> str | None:
        return {BodyKind.JSON: JSON, BodyKind.FORM: FORM, BodyKind.NONE: None}[self.body]


# The caller of the routes that take a seller's test key only.
TEST_KEY = "seller_test_key"


def _auth_of(security: list[dict[str, list[str]]]) -> str | None:
    """The caller to call with: a seller when sellers may, else a partner, else (a route that
    takes API keys only: test mode) a seller's test key."""
    schemes = {name for requirement in security for name in requirement}
    if SELLER_AUTH in schemes:
        return "seller"
    if PARTNER_AUTH in schemes:
        return "partner"
    if API_KEY_AUTH in schemes:
        return TEST_KEY
    assert not schemes, f"unknown security schemes {schemes}"
    return None


def write_routes(document: Mapping[str, Any]) -> list[WriteRoute]:
    routes = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method.upper() not in WRITE_METHODS:
                continue
            content: dict[str, Any] = operation.get("requestBody", {}).get("content", {})
            media: dict[str, Any] = next(iter(content.values()), {})
            kind = BodyKind.JSON if JSON in content else BodyKind.FORM if content else BodyKind.NONE
            parameters = operation.get("parameters", [])
            routes.append(
                WriteRoute(
                    method=method.upper(),
                    path=path,
                    auth=_auth_of(operation.get("security", [])),
                    body=kind,
                    path_params=tuple(p["name"] for p in parameters if p["in"] == "path"),
                    header_params=tuple(p["name"] for p in parameters if p["in"] == "header"),
                    body_schema=media.get("schema"),
                )
            )
    return sorted(routes, key=lambda route: (route.path, route.method))


def routed_write_routes(app: FastAPI) -> set[str]:
    """Write routes as the router knows them, documented or not."""
    found = set()
    for context in iter_route_contexts(app.routes):
        path = context.path_format
        for method in getattr(context.original_route, "methods", None) or ():
            if method in WRITE_METHODS and path is not None:
                found.add(f"{method} {path}")
    return found


def _resolve(schema: Mapping[str, Any], components: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow `$ref`s and drop the `null` alternative of optional fields."""
    while True:
        if "$ref" in schema:
            schema = components[schema["$ref"].rsplit("/", 1)[-1]]
        elif "anyOf" in schema or "oneOf" in schema:
            options = [s for s in schema.get("anyOf", schema.get("oneOf")) if s != {"type": "null"}]
            assert len(options) == 1, f"ambiguous schema {schema}"
            schema = options[0]
        else:
            return schema


FieldPath = tuple[str | int, ...]


def field_paths(
    schema: Mapping[str, Any], components: Mapping[str, Any], prefix: FieldPath = ()
) -> list[FieldPath]:
    """Every field a body can carry: nested objects' fields and the first item of each list."""
    paths: list[FieldPath] = []
    for name, prop in _resolve(schema, components).get("properties", {}).items():
        path: FieldPath = (*prefix, name)
        paths.append(path)
        target = _resolve(prop, components)
        if target.get("type") == "array":
            paths.append((*path, 0))
            items = _resolve(target.get("items", {}), components)
            if "properties" in items:
                paths += field_paths(items, components, (*path, 0))
        elif "properties" in target:
            paths += field_paths(target, components, path)
    return paths


# Never started: only its routes and OpenAPI document are read, so the URLs are never used.
COLLECTION_SETTINGS = make_settings("postgresql+asyncpg://unused/unused", "redis://unused:6379/0")
COLLECTION_APP = create_app(COLLECTION_SETTINGS)
DOCUMENT = COLLECTION_APP.openapi()
COMPONENTS: Mapping[str, Any] = DOCUMENT.get("components", {}).get("schemas", {})
WRITE_ROUTES = write_routes(DOCUMENT)
# The apps here keep the default limit.
MAX_BODY_BYTES: int = COLLECTION_SETTINGS.max_body_bytes
JSON_ROUTES = [route for route in WRITE_ROUTES if route.body is BodyKind.JSON]
FORM_ROUTES = [route for route in WRITE_ROUTES if route.body is BodyKind.FORM]
ROUTES_WITH_PATH_PARAMS = [route for route in WRITE_ROUTES if route.path_params]

# The write routes that exist today: the enumeration must find at least these.
KNOWN_WRITE_ROUTES = {
    "POST /seller/signup",
    "POST /seller/token",
    "POST /seller/logout",
    "POST /seller/password/forgot",
    "POST /seller/password/reset",
    "POST /seller/verify/resend",
    "POST /partner/signup",
    "POST /partner/token",
    "POST /partner/logout",
    "POST /partner/password/forgot",
    "POST /partner/password/reset",
    "POST /partner/verify/resend",
    "PATCH /partner/me",
    "POST /shipments",
    "PATCH /shipments/{shipment_id}",
    "POST /shipments/{shipment_id}/cancel",
    "PUT /shipments/{shipment_id}/tags",
    "POST /track/{tracking_number}/review",
    "POST /seller/webhooks",
    "DELETE /seller/webhooks/{endpoint_id}",
    "POST /seller/webhooks/{endpoint_id}/test",
    "POST /seller/webhooks/{endpoint_id}/enable",
    "POST /seller/webhooks/{endpoint_id}/rotate-secret",
    "POST /seller/api-keys",
    "DELETE /seller/api-keys/{key_id}",
    "POST /partner/api-keys",
    "DELETE /partner/api-keys/{key_id}",
    "POST /test/shipments/{shipment_id}/advance",
    "DELETE /test/data",
}


def _route_param(routes: list[WriteRoute]) -> list[Any]:
    return [pytest.param(route, id=route.id) for route in routes]


# --- the world every request is made in -------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Accounts and objects that every valid request needs, all owned by the callers."""

    seller: dict[str, Any]
    seller_headers: dict[str, str]
    partner: dict[str, Any]
    partner_headers: dict[str, str]
    placed: dict[str, Any]  # cancellable, taggable
    out_for_delivery: dict[str, Any]  # deliverable with `delivery_code`
    delivery_code: str
    delivered: dict[str, Any]  # reviewable with `review_token`
    review_token: str
    webhook_id: str
    disabled_webhook_id: str  # disabled by the worker, as it were: enabling it changes it
    reset_tokens: dict[str, str]  # by account kind
    api_key_ids: dict[str, str]  # a live key of each account kind, by kind
    test_key_headers: dict[str, str]  # the seller's test key, with every scope
    test_shipment: dict[str, Any]  # placed, created with the test key

    def account(self, kind: str) -> dict[str, Any]:
        return self.seller if kind == "seller" else self.partner

    def headers(self, kind: str) -> dict[str, str]:
        if kind == TEST_KEY:
            return self.test_key_headers
        return self.seller_headers if kind == "seller" else self.partner_headers

    def token(self, kind: str) -> str:
        return self.headers(kind)["Authorization"].removeprefix("Bearer ")


@dataclass(frozen=True)
class Valid:
    """What makes a request to a route valid, apart from its caller's token."""

    path_values: dict[str, str] = field(default_factory=dict)
    body: Any = None  # the JSON document, or the form's fields
    headers: dict[str, str] = field(default_factory=dict)


def _future(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def _signup(kind: str) -> Callable[[World], Valid]:
    def valid(_world: World) -> Valid:
        return Valid(body=seller_body() if kind == "seller" else partner_body())

    return valid


def _token(kind: str) -> Callable[[World], Valid]:
    def valid(world: World) -> Valid:
        return Valid(body={"username": world.account(kind)["email"], "password": PASSWORD})

    return valid


def _forgot(kind: str) -> Callable[[World], Valid]:
    def valid(world: World) -> Valid:
        return Valid(body={"email": world.account(kind)["email"]})

    return valid


def _reset(kind: str) -> Callable[[World], Valid]:
    def valid(world: World) -> Valid:
        return Valid(
            body={"token": world.reset_tokens[kind], "new_password": "a brand new password"}
        )

    return valid


def _no_body(_world: World) -> Valid:
    return Valid()


def _update_partner(world: World) -> Valid:
    return Valid(
        body={
            # Its own name: once approved (the suite approves at sign-up), only the operator
            # changes it, and sending it unchanged is what stays valid.
            "name": world.partner["name"],
            "serviceable_zip_codes": [DESTINATION_ZIP, "02140"],
            "max_handling_capacity": 9,
        }
    )


def _create_shipment(_world: World) -> Valid:
    body = shipment_body()
    body["recipient"]["phone"] = "+1 617 555 0100"
    return Valid(body=body, headers={"Idempotency-Key": f"hostile-{uuid.uuid4().hex}"})


def _deliver_shipment(world: World) -> Valid:
    """The shipment out for delivery, with every field a report can carry: refused at the
    door, it goes back to its sender (a code is then not needed, and not checked)."""
    shipment = world.out_for_delivery
    return Valid(
        path_values={"shipment_id": shipment["id"]},
        body={
            "status": "returned",
            "failure_reason": "refused",
            "location_zip": DESTINATION_ZIP,
            "location": {
                "zip_code": DESTINATION_ZIP,
                "city": "Cambridge",
                "lat": 42.36,
                "lon": -71.09,
            },
            "occurred_at": shipment["created_at"],
            "note": "Refused by the recipient",
            "estimated_delivery": _future(1),
            "verification_code": world.delivery_code,
        },
        headers={"If-Match": f'"{shipment["version"]}"'},
    )


def _scan_batch(world: World) -> Valid:
    """Two scans: the parcel out for delivery is refused at the door (every field a scan can
    carry), and the placed one is picked up."""
    refused = world.out_for_delivery
    return Valid(
        body={
            "scans": [
                {
                    "scan_id": "van-1-0001",
                    "tracking_number": refused["tracking_number"],
                    "status": "returned",
                    "failure_reason": "refused",
                    "note": "Refused by the recipient",
                    "occurred_at": refused["created_at"],
                    "location_zip": DESTINATION_ZIP,
                    "location": {
                        "zip_code": DESTINATION_ZIP,
                        "city": "Cambridge",
                        "lat": 42.36,
                        "lon": -71.09,
                    },
                    "estimated_delivery": _future(2),
                    "verification_code": world.delivery_code,
                },
                {
                    "scan_id": "van-1-0002",
                    "tracking_number": world.placed["tracking_number"],
                    "status": "in_transit",
                },
            ]
        }
    )


def _correct_delivery_details(world: World) -> Valid:
    shipment = world.placed
    return Valid(
        path_values={"shipment_id": shipment["id"]},
        body={
            "recipient": {"name": "Grace B. Hopper", "email": "gbh@example.com", "phone": None},
            "destination": {
                "zip_code": DESTINATION_ZIP,
                "address_line": "78 Massachusetts Ave",
                "city": "Cambridge",
            },
        },
        headers={"If-Match": f'"{shipment["version"]}"'},
    )


def _cancel_shipment(world: World) -> Valid:
    return Valid(path_values={"shipment_id": world.placed["id"]})


def _replace_tags(world: World) -> Valid:
    return Valid(path_values={"shipment_id": world.placed["id"]}, body={"tags": ["fragile", "vip"]})


def _create_api_key(kind: str) -> Callable[[World], Valid]:
    def valid(_world: World) -> Valid:
        scopes = ["shipments:read", "shipments:write"] + (["webhooks"] if kind == "seller" else [])
        return Valid(
            body={"name": "Hostile", "scopes": scopes, "mode": "live", "expires_at": _future(30)}
        )

    return valid


def _api_key(kind: str) -> Callable[[World], Valid]:
    def valid(world: World) -> Valid:
        return Valid(path_values={"key_id": world.api_key_ids[kind]})

    return valid


def _advance_test_shipment(world: World) -> Valid:
    return Valid(
        path_values={"shipment_id": world.test_shipment["id"]},
        body={"to": "delivered", "scenario": "delivered_second_attempt"},
    )


def _review(world: World) -> Valid:
    return Valid(
        path_values={"tracking_number": world.delivered["tracking_number"]},
        body={"token": world.review_token, "rating": 5, "comment": "Fast and careful."},
    )


# Loopback (allowed by the setting below): nothing resolves a name, and no worker sends to it.
# The world's endpoints have these URLs; a new one needs a URL of its own.
WEBHOOK_BODY = {"url": "http://127.0.0.1:9/hooks", "description": "Order system"}
DISABLED_WEBHOOK_BODY = {"url": "http://127.0.0.1:9/disabled", "description": "Gone quiet"}


def _create_webhook(_world: World) -> Valid:
    return Valid(body={**WEBHOOK_BODY, "url": "http://127.0.0.1:9/new-hooks"})


def _webhook(world: World) -> Valid:
    return Valid(path_values={"endpoint_id": world.webhook_id})


def _disabled_webhook(world: World) -> Valid:
    return Valid(path_values={"endpoint_id": world.disabled_webhook_id})


def _rotate_webhook_secret(world: World) -> Valid:
    return Valid(path_values={"endpoint_id": world.webhook_id}, body={"overlap_seconds": 3600})


RECIPES: dict[str, Callable[[World], Valid]] = {
    "POST /seller/signup": _signup("seller"),
    "POST /partner/signup": _signup("partner"),
    "POST /seller/token": _token("seller"),
    "POST /partner/token": _token("partner"),
    "POST /seller/password/forgot": _forgot("seller"),
    "POST /partner/password/forgot": _forgot("partner"),
    "POST /seller/password/reset": _reset("seller"),
    "POST /partner/password/reset": _reset("partner"),
    "POST /seller/logout": _no_body,
    "POST /partner/logout": _no_body,
    "POST /seller/verify/resend": _no_body,
    "POST /partner/verify/resend": _no_body,
    "PATCH /partner/me": _update_partner,
    "POST /shipments": _create_shipment,
    "PATCH /shipments/{shipment_id}": _deliver_shipment,
    "POST /shipments/{shipment_id}/cancel": _cancel_shipment,
    "PUT /shipments/{shipment_id}/tags": _replace_tags,
    "PATCH /shipments/{shipment_id}/delivery-details": _correct_delivery_details,
    "POST /scans": _scan_batch,
    "POST /track/{tracking_number}/review": _review,
    "POST /seller/webhooks": _create_webhook,
    "DELETE /seller/webhooks/{endpoint_id}": _webhook,
    "POST /seller/webhooks/{endpoint_id}/test": _webhook,
    "POST /seller/webhooks/{endpoint_id}/enable": _disabled_webhook,
    "POST /seller/webhooks/{endpoint_id}/rotate-secret": _rotate_webhook_secret,
    "POST /seller/api-keys": _create_api_key("seller"),
    "POST /partner/api-keys": _create_api_key("partner"),
    "DELETE /seller/api-keys/{key_id}": _api_key("seller"),
    "DELETE /partner/api-keys/{key_id}": _api_key("partner"),
    "POST /test/shipments/{shipment_id}/advance": _advance_test_shipment,
    "DELETE /test/data": _no_body,
}


def _default_path_values(world: World) -> dict[str, str]:
    """For a route without a recipe yet: path parameters filled by their names."""
    return {
        "key_id": world.api_key_ids["seller"],
        "shipment_id": world.placed["id"],
        "endpoint_id": world.webhook_id,
        "tracking_number": world.delivered["tracking_number"],
    }


def valid_request(route: WriteRoute, world: World) -> Valid:
    recipe = RECIPES.get(route.id)
    if recipe is not None:
        return recipe(world)
    # New routes still meet the whole-body, header and path corpus: empty JSON object bodies.
    return Valid(
        path_values=_default_path_values(world), body=None if route.body is BodyKind.NONE else {}
    )


def encode_body(route: WriteRoute, body: Any) -> bytes:
    if route.body is BodyKind.JSON:
        return json.dumps(body).encode()
    if route.body is BodyKind.FORM:
        return urlencode(body or {}).encode()
    return b""


HeaderValue = str | bytes
Headers = dict[str, HeaderValue | None]  # None removes a header


@dataclass
class Call:
    """A request, valid until a test makes one part of it hostile."""

    method: str
    path: str
    headers: Headers
    body: Any  # the valid body, unencoded
    content: bytes | AsyncIterator[bytes]

    def header_list(self) -> list[tuple[bytes, bytes]]:
        return [
            (name.encode("latin-1"), value if isinstance(value, bytes) else value.encode("latin-1"))
            for name, value in self.headers.items()
            if value is not None
        ]


def valid_call(
    route: WriteRoute, world: World, *, path_values: Mapping[str, str] | None = None
) -> Call:
    valid = valid_request(route, world)
    values = {**valid.path_values, **(path_values or {})}
    missing = set(route.path_params) - set(values)
    assert not missing, f"{route.id}: no value for the path parameters {missing}"
    headers: Headers = {}
    if route.auth is not None:
        headers.update(world.headers(route.auth))
    headers.update(valid.headers)
    if route.content_type is not None:
        headers["Content-Type"] = route.content_type
    path = route.path.format(**values)
    return Call(route.method, path, headers, valid.body, encode_body(route, valid.body))


# --- what is stored ---------------------------------------------------------------------------

TABLES = [table.name for table in metadata.sorted_tables]


@dataclass(frozen=True)
class Fingerprint:
    tables: dict[str, tuple[int, str]]  # name -> (rows, md5 of the rows)
    redis_keys: tuple[str, ...]


async def fingerprint(engine: AsyncEngine, redis: Redis) -> Fingerprint:
    query = " UNION ALL ".join(
        f"SELECT '{name}', count(*), "  # noqa: S608 - table names from the models
        f"md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM \"{name}\" AS t"
        for name in TABLES
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(text(query))).all()
    keys = sorted([key async for key in redis.scan_iter() if not key.startswith("ratelimit:")])
    return Fingerprint({str(r[0]): (int(r[1]), str(r[2])) for r in rows}, tuple(keys))


def differences(before: Fingerprint, after: Fingerprint) -> list[str]:
    changed = [
        f"{name}: {before.tables[name][0]} -> {after.tables[name][0]} rows"
        + ("" if before.tables[name][0] != after.tables[name][0] else " (rows changed)")
        for name in TABLES
        if before.tables[name] != after.tables[name]
    ]
    if before.redis_keys != after.redis_keys:
        added = set(after.redis_keys) - set(before.redis_keys)
        removed = set(before.redis_keys) - set(after.redis_keys)
        changed.append(f"redis: added {sorted(added)}, removed {sorted(removed)}")
    return changed


async def save_snapshot(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(f"DROP SCHEMA IF EXISTS {SNAPSHOT_SCHEMA} CASCADE"))
        await connection.execute(text(f"CREATE SCHEMA {SNAPSHOT_SCHEMA}"))
        for name in TABLES:
            await connection.execute(
                text(f'CREATE TABLE {SNAPSHOT_SCHEMA}."{name}" AS TABLE public."{name}"')
            )


async def restore_snapshot(engine: AsyncEngine, redis: Redis) -> None:
    async with engine.begin() as connection:
        # DELETE, not TRUNCATE: on a dozen small tables it is several times faster.
        for name in reversed(TABLES):  # children first
            await connection.execute(text(f'DELETE FROM public."{name}"'))  # noqa: S608
        for name in TABLES:  # parents first
            # Identity columns (GENERATED ALWAYS) get their saved values back too.
            restore = (
                f'INSERT INTO public."{name}" OVERRIDING SYSTEM VALUE '  # noqa: S608
                f'SELECT * FROM {SNAPSHOT_SCHEMA}."{name}"'
            )
            await connection.execute(text(restore))
    await redis.flushdb()


async def drop_snapshot(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(f"DROP SCHEMA IF EXISTS {SNAPSHOT_SCHEMA} CASCADE"))


async def _queued_payloads(engine: AsyncEngine, template: str) -> list[dict[str, Any]]:
    query = text(
        "SELECT payload FROM outbox_messages WHERE payload ->> 'template' = :template"
        " ORDER BY created_at, id"
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query, {"template": template})).all()
    return [dict(row.payload) for row in rows]


async def build_world(client: httpx.AsyncClient, engine: AsyncEngine) -> World:
    parties = await make_parties(client)
    placed = await create_shipment(client, parties.seller_headers)
    created = await create_shipment(client, parties.seller_headers)
    out_for_delivery = await bring_to(client, engine, parties, created["id"], "out_for_delivery")
    created = await create_shipment(client, parties.seller_headers)
    delivered = await bring_to(client, engine, parties, created["id"], "delivered")
    [delivered_email] = await _queued_payloads(engine, "delivered")
    [review_token] = parse_qs(urlsplit(delivered_email["review_url"]).query)["review"]
    webhook = await client.post(
        "/seller/webhooks", json=WEBHOOK_BODY, headers=parties.seller_headers
    )
    assert webhook.status_code == 201, webhook.text
    disabled_webhook = await client.post(
        "/seller/webhooks", json=DISABLED_WEBHOOK_BODY, headers=parties.seller_headers
    )
    assert disabled_webhook.status_code == 201, disabled_webhook.text
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE webhook_endpoints SET enabled = false, failing_since = now(),"
                " disabled_reason = 'Disabled after failing for a day' WHERE id = :id"
            ),
            {"id": uuid.UUID(disabled_webhook.json()["id"])},
        )
    reset_tokens = {}
    for kind, account in (("seller", parties.seller), ("partner", parties.partner)):
        response = await client.post(f"/{kind}/password/forgot", json={"email": account["email"]})
        assert response.status_code == 202, response.text
        [email] = [
            payload
            for payload in await _queued_payloads(engine, "password_reset")
            if payload["to"] == account["email"]
        ]
        reset_tokens[kind] = email["reset_token"]
    api_key_ids = {}
    for kind, headers in (("seller", parties.seller_headers), ("partner", parties.partner_headers)):
        key = await _new_key(client, kind, headers, "live", ["shipments:read"])
        api_key_ids[kind] = key["id"]
    every_scope = ["shipments:read", "shipments:write", "webhooks", "events:read"]
    test_key = await _new_key(client, "seller", parties.seller_headers, "test", every_scope)
    test_key_headers = {"Authorization": f"Bearer {test_key['secret']}"}
    return World(
        seller=parties.seller,
        seller_headers=parties.seller_headers,
        partner=parties.partner,
        partner_headers=parties.partner_headers,
        placed=placed,
        out_for_delivery=out_for_delivery,
        delivery_code=await delivery_code(engine, out_for_delivery["id"]),
        delivered=delivered,
        review_token=review_token,
        webhook_id=webhook.json()["id"],
        disabled_webhook_id=disabled_webhook.json()["id"],
        reset_tokens=reset_tokens,
        api_key_ids=api_key_ids,
        test_key_headers=test_key_headers,
        test_shipment=await create_shipment(client, test_key_headers),
    )


async def _new_key(
    client: httpx.AsyncClient, kind: str, headers: dict[str, str], mode: str, scopes: list[str]
) -> dict[str, Any]:
    return await create_api_key(
        client, headers, kind=kind, mode=mode, scopes=scopes, name=f"{mode} key"
    )


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_state() -> None:
    """Replaces conftest's truncation before every test: `arena` puts the module's world back
    instead, whenever anything changed it."""


def _settings(database_url: str, redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"webhooks_allow_private": True, **RAISED_LIMITS, **overrides}
    return make_settings(database_url, redis_url, **values)


@pytest.fixture(scope="module")
def hostile_app(database_url: str, redis_url: str) -> FastAPI:
    return create_app(_settings(database_url, redis_url))


@pytest.fixture(scope="module")
async def hostile_client(hostile_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running_client(hostile_app) as http:
        yield http


@dataclass
class Stage:
    """The module's world, once built, and the fingerprint of it."""

    world: World | None = None
    baseline: Fingerprint | None = None


@pytest.fixture(scope="module")
async def stage(db_engine: AsyncEngine) -> AsyncIterator[Stage]:
    yield Stage()
    await drop_snapshot(db_engine)


@dataclass(frozen=True)
class Arena:
    client: httpx.AsyncClient
    world: World
    engine: AsyncEngine
    redis: Redis
    baseline: Fingerprint

    async def send(self, call: Call, client: httpx.AsyncClient | None = None) -> httpx.Response:
        http = client or self.client
        return await http.request(
            call.method, call.path, content=call.content, headers=call.header_list()
        )

    async def assert_unchanged(self, since: Fingerprint | None = None) -> None:
        changes = differences(since or self.baseline, await fingerprint(self.engine, self.redis))
        assert not changes, f"the refused request changed what is stored: {changes}"


@pytest.fixture
async def arena(
    stage: Stage, hostile_client: httpx.AsyncClient, db_engine: AsyncEngine, redis: Redis
) -> Arena:
    if stage.world is None or stage.baseline is None:
        tables = ", ".join(f'"{name}"' for name in TABLES)
        async with db_engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {tables} CASCADE"))
        await redis.flushdb()
        stage.world = await build_world(hostile_client, db_engine)
        await save_snapshot(db_engine)
        stage.baseline = await fingerprint(db_engine, redis)
    elif differences(stage.baseline, await fingerprint(db_engine, redis)):
        await restore_snapshot(db_engine, redis)
        assert not differences(stage.baseline, await fingerprint(db_engine, redis))
    return Arena(hostile_client, stage.world, db_engine, redis, stage.baseline)


# --- the routes -------------------------------------------------------------------------------


def test_the_write_routes_are_enumerated_from_the_openapi_document() -> None:
    found = {route.id for route in WRITE_ROUTES}
    assert found
    assert found >= KNOWN_WRITE_ROUTES, KNOWN_WRITE_ROUTES - found
    by_id = {route.id: route for route in WRITE_ROUTES}
    # The caller comes from the security the OpenAPI builder derived from the dependencies.
    assert by_id["POST /shipments"].auth == "seller"
    assert by_id["PATCH /shipments/{shipment_id}"].auth == "partner"
    assert by_id["POST /seller/signup"].auth is None
    assert by_id["POST /seller/token"].body is BodyKind.FORM
    assert by_id["POST /shipments/{shipment_id}/cancel"].body is BodyKind.NONE


def test_no_write_route_is_left_out_of_the_openapi_document() -> None:
    assert routed_write_routes(COLLECTION_APP) == {route.id for route in WRITE_ROUTES}


def test_the_running_app_has_the_collected_write_routes(hostile_app: FastAPI) -> None:
    running = write_routes(hostile_app.openapi())
    assert [route.id for route in running] == [route.id for route in WRITE_ROUTES]


@pytest.mark.parametrize("route", _route_param(WRITE_ROUTES))
def test_every_write_route_has_a_valid_request(route: WriteRoute) -> None:
    """Add a recipe to RECIPES for a new route, so field-level cases and the control run."""
    assert route.id in RECIPES, f"no valid request known for {route.id}: add it to RECIPES"


def _paths_of(document: Any, prefix: FieldPath = ()) -> set[FieldPath]:
    paths: set[FieldPath] = set()
    if isinstance(document, dict):
        for name, value in document.items():
            paths |= {(*prefix, name)} | _paths_of(value, (*prefix, name))
    elif isinstance(document, list) and document:
        paths |= {(*prefix, 0)} | _paths_of(document[0], (*prefix, 0))
    return paths


@pytest.mark.parametrize("route", _route_param(JSON_ROUTES))
async def test_the_valid_body_names_every_field_of_the_route(
    arena: Arena, route: WriteRoute
) -> None:
    """So that every field a client can send gets every hostile value below."""
    assert route.body_schema is not None
    accepted = set(field_paths(route.body_schema, COMPONENTS))
    sent = _paths_of(valid_request(route, arena.world).body)
    assert accepted <= sent, f"the valid body of {route.id} leaves out {accepted - sent}"


# Writes that store nothing (a token is signed, not stored): the control cannot see them.
STATELESS_WRITES = {"POST /seller/token", "POST /partner/token"}


@pytest.mark.parametrize("route", _route_param(WRITE_ROUTES))
async def test_the_valid_request_is_accepted(arena: Arena, route: WriteRoute) -> None:
    """The control: every hostile case below is this request with one part made hostile, and
    the fingerprint that must not move for them does move for this one."""
    response = await arena.send(valid_call(route, arena.world))

    assert 200 <= response.status_code < 300, (route.id, response.status_code, response.text)
    changes = differences(arena.baseline, await fingerprint(arena.engine, arena.redis))
    assert bool(changes) is (route.id not in STATELESS_WRITES), changes


# --- hostile field values ---------------------------------------------------------------------


def _with_literal(body: Any, path: FieldPath, literal: str) -> bytes:
    document = copy.deepcopy(body)
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = PLACEHOLDER
    encoded = json.dumps(document)
    assert encoded.count(json.dumps(PLACEHOLDER)) == 1
    return encoded.replace(json.dumps(PLACEHOLDER), literal).encode("utf-8")


def _field_params() -> Iterator[Any]:
    for route in JSON_ROUTES:
        assert route.body_schema is not None
        for path in field_paths(route.body_schema, COMPONENTS):
            name = ".".join(str(step) for step in path)
            for case in value_cases(name):
                yield pytest.param(route, path, case, id=f"{route.id}-{name}-{case.id}")


@pytest.mark.parametrize(("route", "path", "case"), list(_field_params()))
async def test_hostile_field_value_is_refused(
    arena: Arena, route: WriteRoute, path: FieldPath, case: Hostile
) -> None:
    call = valid_call(route, arena.world)
    call.content = _with_literal(call.body, path, case.literal)

    response = await arena.send(call)

    # A link token is any text up to its signature check, so a NUL in it is refused there as
    # `invalid_link_token` (400) rather than by validation (422).
    statuses = case.statuses | ({400} if path[-1] == "token" else set())
    # "NaN" may appear as a word: pydantic says "NaN values not permitted" of a datetime. A NaN
    # echoed as a value is still caught: the problem must parse as strict JSON.
    forbidden = tuple(fragment for fragment in case.forbidden if fragment != b"NaN")
    assert_problem(response, statuses, forbidden=forbidden)
    await arena.assert_unchanged()


# --- hostile whole bodies ---------------------------------------------------------------------

ROUTE_TYPE = "@route"  # the route's own content type


@dataclass(frozen=True)
class Wire:
    """A whole body as sent: made from the route's valid body, or replacing it."""

    id: str
    make: Callable[[bytes], bytes]
    content_type: str | None = ROUTE_TYPE
    json_statuses: frozenset[int] = frozenset({422})  # on JSON routes; elsewhere any refusal
    code: str | None = None
    forbidden: tuple[bytes, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    streamed: bool = False
    every_route_statuses: frozenset[int] | None = None

    def statuses(self, route: WriteRoute) -> frozenset[int]:
        if self.every_route_statuses is not None:
            return self.every_route_statuses
        return self.json_statuses if route.body is BodyKind.JSON else REFUSED

    def code_on(self, route: WriteRoute) -> str | None:
        if self.every_route_statuses is not None or route.body is BodyKind.JSON:
            return self.code
        return None


def _replace_with(content: bytes) -> Callable[[bytes], bytes]:
    return lambda _valid: content


def _keep(valid: bytes) -> bytes:
    return valid


def _padded_to(size: int) -> Callable[[bytes], bytes]:
    return lambda valid: valid + b" " * (size - len(valid))


def _from_corpus(raw: RawBody) -> Wire:
    return Wire(
        raw.id,
        _keep if raw.content is None else _replace_with(raw.content),
        raw.content_type,
        raw.statuses,
        raw.code,
        raw.forbidden,
    )


MULTIPART = (
    b'--hostile\r\nContent-Disposition: form-data; name="name"\r\n\r\nAcme\r\n--hostile--\r\n'
)
WIRE_BODIES = [
    *(_from_corpus(raw) for raw in RAW_BODIES),
    Wire(
        "huge_integer_body", _replace_with(b"9" * 5000), JSON, PARSE_FAILURE, forbidden=(b"9" * 50,)
    ),
    # Without a content type the body is read as JSON, where NaN is not a document.
    Wire(
        "no_content_type_nan",
        _replace_with(b"NaN"),
        None,
        frozenset({415, 422}),
        forbidden=(b"NaN",),
    ),
    Wire(
        "multipart_form",
        _replace_with(MULTIPART),
        "multipart/form-data; boundary=hostile",
        frozenset({415}),
        code="unsupported_media_type",
    ),
    Wire(
        "multipart_broken",
        _replace_with(b"--other\r\n\r\n\x00\xff"),
        "multipart/form-data; boundary=hostile",
        frozenset({400, 415}),
    ),
    # The API does not decode compressed bodies: a gzip member is not JSON (nor a bomb).
    Wire(
        "gzip_encoded",
        gzip.compress,
        headers={"Content-Encoding": "gzip"},
        json_statuses=PARSE_FAILURE,
    ),
    Wire(
        "over_limit_content_length",
        _padded_to(MAX_BODY_BYTES + 1),
        code="payload_too_large",
        every_route_statuses=frozenset({413}),
    ),
    Wire(
        "over_limit_chunked_1mib",
        _padded_to(MAX_BODY_BYTES + 1024 * 1024),
        code="payload_too_large",
        streamed=True,
        every_route_statuses=frozenset({413}),
    ),
]


async def _chunks(payload: bytes, chunk_size: int = 16 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(payload), chunk_size):
        yield payload[start : start + chunk_size]


def _wire_params() -> Iterator[Any]:
    for route in WRITE_ROUTES:
        for wire in WIRE_BODIES:
            # A route without a body is asked to refuse a body, but not the lack of one.
            if route.body is BodyKind.NONE and not wire.make(b""):
                continue
            yield pytest.param(route, wire, id=f"{route.id}-{wire.id}")


@pytest.mark.parametrize(("route", "wire"), list(_wire_params()))
async def test_hostile_whole_body_is_refused(arena: Arena, route: WriteRoute, wire: Wire) -> None:
    call = valid_call(route, arena.world)
    assert isinstance(call.content, bytes)
    payload = wire.make(call.content)
    call.content = _chunks(payload) if wire.streamed else payload
    content_type = route.content_type if wire.content_type == ROUTE_TYPE else wire.content_type
    call.headers["Content-Type"] = content_type
    call.headers.update(wire.headers)

    response = await arena.send(call)

    assert_problem(
        response, wire.statuses(route), code=wire.code_on(route), forbidden=wire.forbidden
    )
    await arena.assert_unchanged()


# --- unknown and server-owned fields ----------------------------------------------------------

# Fields of the responses that a client must never set; those a route does accept are skipped.
SERVER_OWNED = (
    "id",
    "status",
    "version",
    "seller_id",
    "partner_id",
    "partner",
    "tracking_number",
    "created_at",
    "updated_at",
    "email_verified_at",
    "active_shipments",
    "token_version",
    "password_hash",
    "enabled",
    "secret",
    "review",
    "timeline",
)


def _top_level_fields(route: WriteRoute) -> set[str]:
    assert route.body_schema is not None
    return {str(path[0]) for path in field_paths(route.body_schema, COMPONENTS)}


@pytest.mark.parametrize(
    ("route", "extra"),
    [
        pytest.param(route, extra, id=f"{route.id}-{extra.id}")
        for route in JSON_ROUTES
        for extra in EXTRA_FIELDS
    ],
)
async def test_unknown_field_is_refused(arena: Arena, route: WriteRoute, extra: Extra) -> None:
    call = valid_call(route, arena.world)
    call.content = json.dumps({**call.body, **extra.fields}).encode()

    response = await arena.send(call)

    problem = assert_problem(
        response, frozenset({422}), code="validation_failed", forbidden=extra.forbidden
    )
    if extra.named_as_extra:
        assert any(issue["type"] == "extra_forbidden" for issue in problem["errors"]), problem
    await arena.assert_unchanged()


@pytest.mark.parametrize("route", _route_param(JSON_ROUTES))
async def test_server_owned_fields_are_refused(arena: Arena, route: WriteRoute) -> None:
    owned = [name for name in SERVER_OWNED if name not in _top_level_fields(route)]
    call = valid_call(route, arena.world)
    call.content = json.dumps({**call.body, **dict.fromkeys(owned, "1")}).encode()

    response = await arena.send(call)

    problem = assert_problem(response, frozenset({422}), code="validation_failed")
    refused = {
        issue["loc"][-1] for issue in problem["errors"] if issue["type"] == "extra_forbidden"
    }
    assert refused == set(owned)
    await arena.assert_unchanged()


# --- hostile login forms ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "form"),
    [
        pytest.param(route, form, id=f"{route.id}-{form.id}")
        for route in FORM_ROUTES
        for form in HOSTILE_FORMS
    ],
)
async def test_hostile_form_is_refused(arena: Arena, route: WriteRoute, form: HostileForm) -> None:
    kind = "seller" if route.path.startswith("/seller/") else "partner"
    email = arena.world.account(kind)["email"]
    call = valid_call(route, arena.world)
    call.content = form.content.replace(EMAIL_SLOT.encode(), email.encode())
    call.headers["Content-Type"] = form.content_type

    response = await arena.send(call)

    assert_problem(response, form.statuses, forbidden=form.forbidden)
    assert b"access_token" not in response.content
    await arena.assert_unchanged()


# --- hostile header values --------------------------------------------------------------------
# The app limits the header block itself (MAX_HEADER_BYTES, 431), since uvicorn's parser does
# not: a 64 KiB token, key or version is refused before anything interprets it. The smaller
# hostile values test how the app handles the values it reads: refused as invalid, never parsed
# into a 500 or a stored row. The uvicorn test at the end sends whole oversized header blocks.


@dataclass(frozen=True)
class HostileHeader:
    id: str
    name: str
    value: Callable[[str], HeaderValue]  # from the caller's token
    statuses: frozenset[int] = REFUSED


KIB_64 = 64 * 1024
UNAUTHORIZED = frozenset({401})
HEADERS_TOO_LARGE = frozenset({431})
INVALID = frozenset({422})
AUTHORIZATION_CASES = [
    HostileHeader(
        "authorization_64k", "Authorization", lambda _: "Bearer " + "A" * KIB_64, HEADERS_TOO_LARGE
    ),
    HostileHeader(
        "authorization_token_nul", "Authorization", lambda t: f"Bearer {t}\x00", UNAUTHORIZED
    ),
    HostileHeader(
        "authorization_token_latin1",
        "Authorization",
        lambda t: f"Bearer {t}".encode() + b"\xff\xfe",
        UNAUTHORIZED,
    ),
    HostileHeader(
        "authorization_invalid_utf8",
        "Authorization",
        lambda _: b"Bearer \xed\xa0\x80\xff",
        UNAUTHORIZED,
    ),
]
UNSUPPORTED = frozenset({415})
CONTENT_TYPE_CASES = [
    HostileHeader("content_type_64k", "Content-Type", lambda _: "x" * KIB_64, HEADERS_TOO_LARGE),
    HostileHeader(
        "content_type_nul", "Content-Type", lambda _: "application/json\x00", UNSUPPORTED
    ),
]
NAMED_HEADER_CASES = {
    "Idempotency-Key": [
        HostileHeader("idempotency_key_nul", "Idempotency-Key", lambda _: "key\x00", INVALID),
        HostileHeader(
            "idempotency_key_latin1", "Idempotency-Key", lambda _: b"key-\xff\xfe", INVALID
        ),
    ],
    "If-Match": [
        HostileHeader(
            "if_match_huge_number", "If-Match", lambda _: '"' + "9" * 5000 + '"', INVALID
        ),
        HostileHeader("if_match_nan", "If-Match", lambda _: "NaN", INVALID),
        HostileHeader("if_match_1e400", "If-Match", lambda _: '"1e400"', INVALID),
        HostileHeader("if_match_negative", "If-Match", lambda _: '"-1"', INVALID),
    ],
}


def _header_cases(route: WriteRoute) -> list[HostileHeader]:
    cases: list[HostileHeader] = []
    if route.auth is not None:
        cases += AUTHORIZATION_CASES
    if route.body is BodyKind.JSON:
        cases += CONTENT_TYPE_CASES
    for name in route.header_params:
        cases.append(
            HostileHeader(f"{name.lower()}_64k", name, lambda _: "9" * KIB_64, HEADERS_TOO_LARGE)
        )
        cases += NAMED_HEADER_CASES.get(name, [])
    return cases


@pytest.mark.parametrize(
    ("route", "header"),
    [
        pytest.param(route, header, id=f"{route.id}-{header.id}")
        for route in WRITE_ROUTES
        for header in _header_cases(route)
    ],
)
async def test_hostile_header_value_is_refused(
    arena: Arena, route: WriteRoute, header: HostileHeader
) -> None:
    call = valid_call(route, arena.world)
    token = arena.world.token(route.auth) if route.auth else ""
    call.headers[header.name] = header.value(token)

    response = await arena.send(call)

    assert_problem(response, header.statuses, forbidden=(b"A" * 100, b"9" * 100))
    await arena.assert_unchanged()


# --- hostile path parameters ------------------------------------------------------------------

HOSTILE_PATH_VALUES = [
    ("nul", "%00"),
    ("lone_surrogate", "%ED%A0%80"),
    ("invalid_utf8", "%FF%FE"),
    ("huge_number", "9" * 5000),
    ("nan", "NaN"),
    ("negative", "-1"),
    ("quote_injection", "1%27%20OR%20%271%27%3D%271"),
    ("long_20000", "a" * 20_000),
]
# Well-formed ids of nothing at all: 404, as for somebody else's object.
UNKNOWN_PATH_VALUES = {"tracking_number": "ZZZZZZZZZZZZZZ"}


@pytest.mark.parametrize(
    ("route", "param", "value", "statuses"),
    [
        pytest.param(route, param, value, REFUSED, id=f"{route.id}-{param}-{value_id}")
        for route in ROUTES_WITH_PATH_PARAMS
        for param in route.path_params
        for value_id, value in HOSTILE_PATH_VALUES
    ]
    + [
        pytest.param(
            route,
            param,
            UNKNOWN_PATH_VALUES.get(param, str(uuid.UUID(int=1))),
            frozenset({404}),
            id=f"{route.id}-{param}-unknown",
        )
        for route in ROUTES_WITH_PATH_PARAMS
        for param in route.path_params
    ],
)
async def test_hostile_path_parameter_is_refused(
    arena: Arena, route: WriteRoute, param: str, value: str, statuses: frozenset[int]
) -> None:
    call = valid_call(route, arena.world, path_values={param: value})

    response = await arena.send(call)

    assert_problem(response, statuses, forbidden=(b"9" * 100, b"a" * 100))
    await arena.assert_unchanged()


# --- rate limits ------------------------------------------------------------------------------

LIMITED_CASES = [
    pytest.param("POST /seller/signup", b"NaN", JSON, id="signup-nan_body"),
    pytest.param(
        "POST /seller/token",
        b"username=a%00%40example.com&password=correct+horse+battery",
        FORM,
        id="token-nul_in_username",
    ),
    pytest.param(
        "POST /seller/password/forgot",
        b'{"email": "a@example.com\\ud800"}',
        JSON,
        id="forgot-lone_surrogate",
    ),
]


@pytest.mark.parametrize(("route_id", "content", "content_type"), LIMITED_CASES)
async def test_hostile_requests_are_refused_while_rate_limited(
    arena: Arena,
    database_url: str,
    redis_url: str,
    route_id: str,
    content: bytes,
    content_type: str,
) -> None:
    """With the real limits spent, hostile input still gets a problem (422 or 429), no 500."""
    [route] = [route for route in WRITE_ROUTES if route.id == route_id]
    limits = {"signups_per_ip": 1, "token_attempts_per_ip": 1, "token_attempts_per_account": 1}
    limited = create_app(_settings(database_url, redis_url, **limits))
    async with running_client(limited) as http:
        statuses = []
        for _ in range(3):  # spend the budget (earlier requests may have spent part of it)
            response = await arena.send(valid_call(route, arena.world), client=http)
            statuses.append(response.status_code)
        assert statuses[-1] == 429, statuses
        spent = await fingerprint(arena.engine, arena.redis)

        call = valid_call(route, arena.world)
        call.content = content
        call.headers["Content-Type"] = content_type
        response = await arena.send(call, client=http)

    assert_problem(response, frozenset({422, 429}))
    await arena.assert_unchanged(since=spent)


# --- oversized header blocks, against a real server -------------------------------------------
# httpx's ASGITransport hands any header block to the app, so the limit that matters in
# production, the HTTP server's, is tested on uvicorn configured as `shiptrack serve` runs it
# (uvicorn's defaults: httptools when installed, else h11). A refusal from the server itself
# is not problem+json (the app never sees the request); one from the app must be.


@pytest.fixture(scope="module")
async def server(database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(_settings(database_url, redis_url))
    async with (
        serving(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=SAFETY_SECONDS) as http,
    ):
        yield http


OVERSIZED_HEADER_BLOCKS = [
    pytest.param([("X-Hostile", "a" * KIB_64)], id="one_64k_header"),
    pytest.param([(f"X-Hostile-{n:04d}", "v" * 48) for n in range(1000)], id="1000_headers"),
]


@pytest.mark.parametrize("padding", OVERSIZED_HEADER_BLOCKS)
@pytest.mark.parametrize("route", _route_param(WRITE_ROUTES))
async def test_oversized_header_block_is_refused_by_the_server(
    arena: Arena, server: httpx.AsyncClient, route: WriteRoute, padding: list[tuple[str, str]]
) -> None:
    call = valid_call(route, arena.world)
    headers = call.header_list() + [(name.encode(), value.encode()) for name, value in padding]

    response = await server.request(call.method, call.path, content=call.content, headers=headers)

    assert_problem(response, HEADERS_TOO_LARGE)
    await arena.assert_unchanged()
