"""Password login, the access token it issues, authentication, logout and login rate limits."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from redis.asyncio import Redis

from backend.config import Settings
from backend.main import create_app
from tests.assertions import assert_problem
from tests.conftest import make_settings, running_client
from tests.factories import PASSWORD, account_with_token, bearer, log_in, sign_up

KINDS = ["seller", "partner"]
OTHER_KIND = {"seller": "partner", "partner": "seller"}


def assert_unauthorized(response: httpx.Response, code: str = "invalid_token") -> None:
    assert_problem(response, 401, code)
    # RFC 6750: a credential that was sent and refused says so; none sent is a bare challenge.
    expected = 'Bearer error="invalid_token"' if code == "invalid_token" else "Bearer"
    assert response.headers["www-authenticate"] == expected


def claims_of(token: str, settings: Settings, kind: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        settings.jwt_secret_key.get_secret_value(),
        algorithms=["HS256"],
        audience=f"shiptrack:{kind}",
        issuer=settings.jwt_issuer,
    )
    return claims


def forge(
    settings: Settings,
    account_id: str,
    *,
    key: str | None = None,
    drop: tuple[str, ...] = (),
    typ: str = "at+jwt",
    **overrides: Any,
) -> str:
    """A token built outside the app; by default exactly what the app would issue."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": account_id,
        "kind": "seller",
        "aud": "shiptrack:seller",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
        "iss": settings.jwt_issuer,
        "ver": 0,
        **overrides,
    }
    for name in drop:
        del claims[name]
    signing_key = key or settings.jwt_secret_key.get_secret_value()
    return jwt.encode(claims, signing_key, algorithm="HS256", headers={"typ": typ})


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token(settings: Settings, account_id: str) -> str:
    now = int(time.time())
    header = {"alg": "none", "typ": "at+jwt"}
    payload = {
        "sub": account_id,
        "kind": "seller",
        "aud": "shiptrack:seller",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
        "iss": settings.jwt_issuer,
    }
    return f"{b64url(header)}.{b64url(payload)}."


def flip_signature_character(token: str) -> str:
    head, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return f"{head}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"


async def token_response(
    client: httpx.AsyncClient, kind: str, email: str, password: str = PASSWORD
) -> httpx.Response:
    return await client.post(f"/{kind}/token", data={"username": email, "password": password})


# Login


@pytest.mark.parametrize("kind", KINDS)
async def test_login_returns_a_bearer_token_that_is_not_cached(
    client: httpx.AsyncClient, settings: Settings, kind: str
) -> None:
    account = await sign_up(client, kind)
    response = await token_response(client, kind, account["email"])
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_ttl_seconds


@pytest.mark.parametrize("kind", KINDS)
async def test_access_token_carries_the_documented_claims_and_header(
    client: httpx.AsyncClient, settings: Settings, kind: str
) -> None:
    account = await sign_up(client, kind)
    token = await log_in(client, kind, account["email"])
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "at+jwt"}
    claims = claims_of(token, settings, kind)
    assert set(claims) == {"sub", "kind", "aud", "jti", "iat", "exp", "iss", "ver"}
    assert claims["sub"] == account["id"]
    assert claims["kind"] == kind
    assert claims["aud"] == f"shiptrack:{kind}"
    assert claims["iss"] == settings.jwt_issuer
    assert claims["ver"] == 0  # bumped by a password reset, which retires older tokens
    assert claims["exp"] - claims["iat"] == settings.access_token_ttl_seconds
    assert abs(claims["iat"] - time.time()) < 60


async def test_each_login_gets_a_new_token_id(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account = await sign_up(client, "seller")
    first = await log_in(client, "seller", account["email"])
    second = await log_in(client, "seller", account["email"])
    assert (
        claims_of(first, settings, "seller")["jti"] != claims_of(second, settings, "seller")["jti"]
    )


async def test_login_ignores_the_letter_case_of_the_email(client: httpx.AsyncClient) -> None:
    account = await sign_up(client, "seller", email="mixed@example.com")
    response = await token_response(client, "seller", "MiXeD@Example.COM")
    assert response.status_code == 200
    me = await client.get("/seller/me", headers=bearer(response.json()["access_token"]))
    assert me.json()["id"] == account["id"]


@pytest.mark.parametrize("kind", KINDS)
async def test_wrong_password_and_unknown_email_get_the_same_401(
    client: httpx.AsyncClient, kind: str
) -> None:
    account = await sign_up(client, kind)
    wrong_password = await token_response(client, kind, account["email"], "not the password")
    unknown_email = await token_response(client, kind, "nobody@example.com")
    for response in (wrong_password, unknown_email):
        assert_unauthorized(response, "invalid_credentials")
        assert "access_token" not in response.text
    first, second = wrong_password.json(), unknown_email.json()
    assert first.pop("request_id") != second.pop("request_id")
    assert first == second


async def test_a_seller_cannot_log_in_on_the_partner_token_endpoint(
    client: httpx.AsyncClient,
) -> None:
    account = await sign_up(client, "seller")
    response = await token_response(client, "partner", account["email"])
    assert_unauthorized(response, "invalid_credentials")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("password", ["x" * 73, "€" * 25], ids=["73-bytes", "75-bytes"])
async def test_login_with_a_password_over_72_bytes_is_422(
    client: httpx.AsyncClient, kind: str, password: str
) -> None:
    account = await sign_up(client, kind)
    response = await token_response(client, kind, account["email"], password)
    assert_problem(response, 422, "validation_failed")


async def test_login_with_a_json_body_is_refused(client: httpx.AsyncClient) -> None:
    account = await sign_up(client, "seller")
    body = {"username": account["email"], "password": PASSWORD}
    response = await client.post("/seller/token", json=body)
    assert response.status_code in (415, 422)
    assert response.headers["content-type"] == "application/problem+json"


# Authenticated reads


@pytest.mark.parametrize("kind", KINDS)
async def test_me_returns_the_account_of_the_token(client: httpx.AsyncClient, kind: str) -> None:
    account, headers = await account_with_token(client, kind)
    response = await client.get(f"/{kind}/me", headers=headers)
    assert response.status_code == 200
    me = response.json()
    assert me["id"] == account["id"]
    assert me["email"] == account["email"]
    assert me["name"] == account["name"]
    assert "password_hash" not in me


@pytest.mark.parametrize("kind", KINDS)
async def test_a_token_of_the_other_kind_is_403(client: httpx.AsyncClient, kind: str) -> None:
    _, headers = await account_with_token(client, OTHER_KIND[kind])
    response = await client.get(f"/{kind}/me", headers=headers)
    assert_problem(response, 403, "wrong_account_kind")


# Logout


@pytest.mark.parametrize("kind", KINDS)
async def test_logout_revokes_that_token_only(client: httpx.AsyncClient, kind: str) -> None:
    account = await sign_up(client, kind)
    first = bearer(await log_in(client, kind, account["email"]))
    second = bearer(await log_in(client, kind, account["email"]))
    logout = await client.post(f"/{kind}/logout", headers=first)
    assert logout.status_code == 204
    assert logout.content == b""
    assert_unauthorized(await client.get(f"/{kind}/me", headers=first))
    assert (await client.get(f"/{kind}/me", headers=second)).status_code == 200


async def test_a_revoked_token_cannot_log_out_again(client: httpx.AsyncClient) -> None:
    _, headers = await account_with_token(client, "seller")
    assert (await client.post("/seller/logout", headers=headers)).status_code == 204
    assert_unauthorized(await client.post("/seller/logout", headers=headers))


@pytest.mark.parametrize("kind", KINDS)
async def test_logout_keeps_the_token_id_in_redis_exactly_as_long_as_the_token_lives(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, kind: str
) -> None:
    account = await sign_up(client, kind)
    token = await log_in(client, kind, account["email"])
    expires_at = claims_of(token, settings, kind)["exp"]
    assert (await client.post(f"/{kind}/logout", headers=bearer(token))).status_code == 204
    key = f"revoked-jti:{claims_of(token, settings, kind)['jti']}"
    ttl_seconds = await redis.pttl(key) / 1000
    remaining_life = expires_at - time.time()
    assert ttl_seconds > 0
    # Never shorter than the token (a revoked token would come back to life) and at most
    # the one second of rounding up longer.
    assert remaining_life - 0.1 <= ttl_seconds <= remaining_life + 1


async def test_logout_with_a_token_of_the_other_kind_is_403_and_revokes_nothing(
    client: httpx.AsyncClient,
) -> None:
    _, partner_headers = await account_with_token(client, "partner")
    response = await client.post("/seller/logout", headers=partner_headers)
    assert_problem(response, 403, "wrong_account_kind")
    assert (await client.get("/partner/me", headers=partner_headers)).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
async def test_logout_without_a_token_is_401(client: httpx.AsyncClient, kind: str) -> None:
    assert_unauthorized(await client.post(f"/{kind}/logout"), "not_authenticated")


# Tokens that must be refused


async def test_a_hand_built_token_like_the_apps_own_is_accepted(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Control for the forged-token tests below: only their one defect gets them refused."""
    account = await sign_up(client, "seller")
    response = await client.get("/seller/me", headers=bearer(forge(settings, account["id"])))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Token abc"],
    ids=["missing", "basic", "bearer-no-token", "bearer-blank", "other-scheme"],
)
async def test_requests_without_a_bearer_token_are_401(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = await client.get("/seller/me", headers=headers)
    assert_unauthorized(response, "not_authenticated")


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9..", "\u00e9t\u00e9"], ids=str
)
async def test_a_garbage_token_is_401(client: httpx.AsyncClient, token: str) -> None:
    authorization = b"Bearer " + token.encode()  # raw bytes: the last one is not ASCII
    response = await client.get("/seller/me", headers={b"Authorization": authorization})
    assert_unauthorized(response)


async def test_a_token_with_a_flipped_signature_character_is_401(
    client: httpx.AsyncClient,
) -> None:
    account = await sign_up(client, "seller")
    token = await log_in(client, "seller", account["email"])
    response = await client.get("/seller/me", headers=bearer(flip_signature_character(token)))
    assert_unauthorized(response)


async def test_an_unsigned_alg_none_token_is_401(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account = await sign_up(client, "seller")
    response = await client.get(
        "/seller/me", headers=bearer(unsigned_token(settings, account["id"]))
    )
    assert_unauthorized(response)


@pytest.mark.parametrize(
    ("options", "overrides"),
    [
        ({"key": "another-key-that-is-long-enough-0123456789"}, {}),
        ({}, {"exp": int(time.time()) - 5, "iat": int(time.time()) - 1000}),
        ({}, {"iss": "someone-else"}),
        ({"drop": ("jti",)}, {}),
        ({"drop": ("exp",)}, {}),
        ({"drop": ("kind",)}, {}),
        ({"drop": ("aud",)}, {}),
        ({}, {"kind": "partner"}),
        ({}, {"kind": "admin"}),
        ({}, {"aud": "someone-else"}),
        ({}, {"sub": "not-a-uuid"}),
        ({"typ": "JWT"}, {}),
    ],
    ids=[
        "other-key",
        "expired",
        "wrong-issuer",
        "no-jti",
        "no-exp",
        "no-kind",
        "no-aud",
        "kind-disagrees-with-aud",
        "unknown-kind",
        "foreign-audience",
        "sub-not-uuid",
        "not-an-access-token",
    ],
)
async def test_a_forged_or_defective_token_is_401(
    client: httpx.AsyncClient,
    settings: Settings,
    options: dict[str, Any],
    overrides: dict[str, Any],
) -> None:
    account = await sign_up(client, "seller")
    token = forge(settings, account["id"], **options, **overrides)
    response = await client.get("/seller/me", headers=bearer(token))
    assert_unauthorized(response)


async def test_a_token_for_a_seller_that_does_not_exist_is_401(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    token = forge(settings, str(uuid.uuid4()))
    response = await client.get("/seller/me", headers=bearer(token))
    assert_unauthorized(response)


# Rate limits


async def test_too_many_wrong_passwords_lock_the_account_but_not_others(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    victim = await sign_up(client, "seller")
    other = await sign_up(client, "seller")
    # From one address, the per-address cap locks first (other addresses: test_login_abuse.py).
    for _ in range(settings.token_attempts_per_account_and_ip):
        wrong = await token_response(client, "seller", victim["email"], "wrong password")
        assert_unauthorized(wrong, "invalid_credentials")
    locked = await token_response(client, "seller", victim["email"])
    assert_problem(locked, 429, "rate_limited")
    assert locked.headers["retry-after"].isdigit()
    assert 0 < int(locked.headers["retry-after"]) <= settings.rate_limit_window_seconds
    assert "access_token" not in locked.text
    assert (await token_response(client, "seller", other["email"])).status_code == 200


async def test_the_account_lockout_ignores_the_letter_case_of_the_email(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    victim = await sign_up(client, "partner", email="case@example.com")
    for attempt in range(settings.token_attempts_per_account_and_ip):
        email = "CASE@example.com" if attempt % 2 else "case@EXAMPLE.com"
        await token_response(client, "partner", email, "wrong password")
    locked = await token_response(client, "partner", victim["email"])
    assert_problem(locked, 429, "rate_limited")


async def test_successful_logins_do_not_count_towards_the_account_lockout(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account = await sign_up(client, "seller")
    for _ in range(settings.token_attempts_per_account_and_ip + 1):
        assert (await token_response(client, "seller", account["email"])).status_code == 200


async def test_login_attempts_beyond_the_per_ip_limit_get_429(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    seller = await sign_up(client, "seller")
    partner = await sign_up(client, "partner")
    for attempt in range(settings.token_attempts_per_ip):
        email = f"stranger-{attempt}@example.com"  # distinct, to stay under per-account limits
        kind = KINDS[attempt % 2]
        assert_unauthorized(await token_response(client, kind, email), "invalid_credentials")
    for kind, account in (("seller", seller), ("partner", partner)):
        blocked = await token_response(client, kind, account["email"])
        assert_problem(blocked, 429, "rate_limited")
        assert int(blocked.headers["retry-after"]) > 0


async def test_parallel_guesses_are_capped_before_any_password_is_checked(
    database_url: str, redis_url: str
) -> None:
    # A burst must not slip past the per-account limit by arriving before any failure counted.
    settings = make_settings(
        database_url, redis_url, token_attempts_per_account=3, token_attempts_per_ip=1000
    )
    app = create_app(settings)
    async with running_client(app) as http:
        account = await sign_up(http, "seller")
        wrong = {"username": account["email"], "password": "not the password"}
        right = {"username": account["email"], "password": account["password"]}

        answers = await asyncio.gather(
            *(http.post("/seller/token", data=wrong) for _ in range(29)),
            http.post("/seller/token", data=right),
        )

    statuses = [answer.status_code for answer in answers]
    assert statuses.count(401) + statuses.count(200) <= 3  # only 3 passwords were ever checked
    assert statuses.count(429) >= 27
