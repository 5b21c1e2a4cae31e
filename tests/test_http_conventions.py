"""Conventions every response follows: request ids, timing, problem documents, CORS."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backend.config import Settings
from backend.main import create_app
from tests.conftest import make_settings
from tests.factories import account_with_token, seller_body

PROBLEM = "application/problem+json"
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
SHOP = "https://shop.example"
EVIL = "https://evil.example"

Call = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


async def _health(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/health/live")


async def _signup_created(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/seller/signup", json=seller_body())


async def _signup_invalid(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/seller/signup", json={"name": "x"})


async def _me_without_token(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/seller/me")


async def _me_with_token(client: httpx.AsyncClient) -> httpx.Response:
    _, headers = await account_with_token(client, "seller")
    return await client.get("/seller/me", headers=headers)


async def _logout_no_content(client: httpx.AsyncClient) -> httpx.Response:
    _, headers = await account_with_token(client, "seller")
    return await client.post("/seller/logout", headers=headers)


async def _wrong_kind(client: httpx.AsyncClient) -> httpx.Response:
    _, headers = await account_with_token(client, "partner")
    return await client.get("/seller/me", headers=headers)


async def _bad_login(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(
        "/seller/token", data={"username": "nobody@example.com", "password": "wrong password"}
    )


async def _unknown_path(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/no/such/thing")


async def _wrong_method(client: httpx.AsyncClient) -> httpx.Response:
    return await client.delete("/seller/signup")


async def _wrong_media_type(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(
        "/seller/signup", content=b"hello", headers={"Content-Type": "text/plain"}
    )


async def _too_large(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(
        "/seller/signup", content=b" " * (128 * 1024), headers={"Content-Type": "application/json"}
    )


async def _openapi(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/openapi.json")


CALLS = [
    pytest.param(_health, 200, id="200_health"),
    pytest.param(_openapi, 200, id="200_openapi"),
    pytest.param(_me_with_token, 200, id="200_me"),
    pytest.param(_signup_created, 201, id="201_signup"),
    pytest.param(_logout_no_content, 204, id="204_logout"),
    pytest.param(_bad_login, 401, id="401_login"),
    pytest.param(_me_without_token, 401, id="401_no_token"),
    pytest.param(_wrong_kind, 403, id="403_wrong_kind"),
    pytest.param(_unknown_path, 404, id="404_unknown_path"),
    pytest.param(_wrong_method, 405, id="405_wrong_method"),
    pytest.param(_too_large, 413, id="413_too_large"),
    pytest.param(_wrong_media_type, 415, id="415_text_plain"),
    pytest.param(_signup_invalid, 422, id="422_validation"),
]


def _process_time(response: httpx.Response) -> float:
    value = float(response.headers["x-process-time"])
    assert 0 <= value < 60
    return value


def _problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].split(";")[0] == PROBLEM
    body: dict[str, Any] = json.loads(response.content)
    return body


@pytest.mark.parametrize(("call", "status"), CALLS)
async def test_every_response_has_a_generated_request_id_and_process_time(
    client: httpx.AsyncClient, call: Call, status: int
) -> None:
    response = await call(client)

    assert response.status_code == status, response.text[:300]
    assert GENERATED_ID.match(response.headers["x-request-id"])
    _process_time(response)
    # No browser may read a JSON answer or a stored text as HTML or script.
    assert response.headers["x-content-type-options"] == "nosniff"
    if status >= 400:
        body = _problem(response)
        assert body["status"] == status
        assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("kind", ["seller", "partner"])
async def test_the_email_verification_page_sends_a_strict_policy(
    client: httpx.AsyncClient, kind: str
) -> None:
    response = await client.get(
        f"/{kind}/verify", params={"token": "not-a-token"}, headers={"Accept": "text/html"}
    )

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'; script-src 'self';" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_each_request_gets_its_own_id(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/health/live")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize(("call", "status"), CALLS)
async def test_a_safe_client_request_id_is_echoed(
    client: httpx.AsyncClient, call: Call, status: int
) -> None:
    request_id = f"req-{status}_trace.01:abc"
    client.headers["X-Request-ID"] = request_id
    try:
        response = await call(client)
    finally:
        del client.headers["X-Request-ID"]

    assert response.status_code == status
    assert response.headers["x-request-id"] == request_id
    _process_time(response)
    if status >= 400:
        assert _problem(response)["request_id"] == request_id


UNSAFE_IDS = [
    pytest.param("has spaces in it", id="spaces"),
    pytest.param("a" * 300, id="300_chars"),
    pytest.param("a" * 129, id="129_chars"),
    pytest.param("<script>alert(1)</script>", id="markup"),
    pytest.param("id\twith\ttabs", id="tabs"),
    pytest.param('quote"injection', id="quote"),
    pytest.param("caf\u00e9", id="non_ascii"),
]


@pytest.mark.parametrize("unsafe", UNSAFE_IDS)
async def test_an_unsafe_client_request_id_is_replaced(
    client: httpx.AsyncClient, unsafe: str
) -> None:
    response = await client.get(
        "/no/such/thing", headers=[(b"X-Request-ID", unsafe.encode("utf-8"))]
    )

    assert response.status_code == 404
    generated = response.headers["x-request-id"]
    assert generated != unsafe
    assert GENERATED_ID.match(generated)
    body = _problem(response)
    assert body["request_id"] == generated
    assert unsafe.encode("utf-8") not in response.content


async def test_the_longest_safe_request_id_is_kept(client: httpx.AsyncClient) -> None:
    request_id = "A" * 128
    response = await client.get("/health/live", headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id


async def test_unknown_path_is_a_not_found_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/shipments-that-do-not-exist/123")

    assert response.status_code == 404
    body = _problem(response)
    assert body["code"] == "not_found"
    assert body["status"] == 404
    assert body["type"].endswith("not_found")
    assert body["title"]
    assert body["detail"]
    # The path is not reflected back (it is attacker-controlled text).
    assert "shipments-that-do-not-exist" not in response.text


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        pytest.param("DELETE", "/seller/signup", "POST", id="delete_signup"),
        pytest.param("GET", "/seller/token", "POST", id="get_token"),
        pytest.param("PUT", "/partner/me", "GET", id="put_partner_me"),
        pytest.param("POST", "/health/live", "GET", id="post_health"),
    ],
)
async def test_wrong_method_is_a_method_not_allowed_problem(
    client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)

    assert response.status_code == 405
    body = _problem(response)
    assert body["code"] == "method_not_allowed"
    assert body["status"] == 405
    assert body["request_id"] == response.headers["x-request-id"]
    allow = {part.strip() for part in response.headers["allow"].split(",")}
    assert allowed in allow
    assert method not in allow


async def test_405_allow_header_lists_every_method_of_the_resource(
    client: httpx.AsyncClient,
) -> None:
    """RFC 9110 §15.5.6: Allow lists the methods the resource supports, here GET and PATCH."""
    response = await client.put("/partner/me")

    assert response.status_code == 405
    allow = {part.strip() for part in response.headers["allow"].split(",")}
    assert {"GET", "PATCH"} <= allow
    assert "PUT" not in allow


@pytest.fixture
async def cors_client(database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings: Settings = make_settings(database_url, redis_url, cors_origins=[SHOP])
    application: FastAPI = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


def _preflight_headers(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }


async def test_cors_preflight_from_a_configured_origin_is_allowed(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.options("/seller/signup", headers=_preflight_headers(SHOP))

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == SHOP
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "content-type", "idempotency-key"):
        assert header in allowed_headers
    assert response.headers["access-control-allow-origin"] != "*"
    assert GENERATED_ID.match(response.headers["x-request-id"])


async def test_cors_preflight_from_another_origin_is_not_allowed(
    cors_client: httpx.AsyncClient,
) -> None:
    response = await cors_client.options("/seller/signup", headers=_preflight_headers(EVIL))

    assert response.status_code >= 400
    assert "access-control-allow-origin" not in response.headers


async def test_cors_actual_request_exposes_request_id_to_the_allowed_origin(
    cors_client: httpx.AsyncClient,
) -> None:
    allowed = await cors_client.post("/seller/signup", json=seller_body(), headers={"Origin": SHOP})
    assert allowed.status_code == 201
    assert allowed.headers["access-control-allow-origin"] == SHOP
    exposed = {
        h.strip().lower() for h in allowed.headers["access-control-expose-headers"].split(",")
    }
    assert {"x-request-id", "x-process-time", "retry-after"} <= exposed

    other = await cors_client.get("/health/live", headers={"Origin": EVIL})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


async def test_without_configured_origins_there_are_no_cors_headers(
    client: httpx.AsyncClient,
) -> None:
    preflight = await client.options("/seller/signup", headers=_preflight_headers(SHOP))
    actual = await client.get("/health/live", headers={"Origin": SHOP})

    assert actual.status_code == 200
    for response in (preflight, actual):
        assert not [name for name in response.headers if name.lower().startswith("access-control")]
    # An OPTIONS the app does not serve is an ordinary problem document, with the usual headers.
    assert preflight.status_code == 405
    assert _problem(preflight)["code"] == "method_not_allowed"
    _process_time(preflight)
