"""Redis or PostgreSQL unreachable: fast 503 problem documents, fail closed, recover by itself."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
from fastapi import APIRouter, Request
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from backend.context import app_context
from backend.db import UnitOfWorkRoute, unit_of_work_of
from backend.main import create_app
from tests.conftest import OwnedRedis, make_settings, running_client
from tests.factories import PASSWORD, bearer, log_in, seller_body, sign_up

PROBLEM = "application/problem+json"


def unused_tcp_port() -> int:
    """A local port nothing listens on (bound, read and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def assert_unavailable(response: httpx.Response) -> None:
    """A 503 problem document that tells the client when to come back."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["code"] == "service_unavailable"
    assert problem["status"] == 503
    assert problem["type"]
    assert problem["title"]
    assert problem["detail"]
    assert problem["request_id"] == response.headers["x-request-id"]
    retry_after = response.headers.get("retry-after")
    assert retry_after is not None
    assert retry_after.isdigit()
    assert int(retry_after) >= 1


async def test_redis_outage_fails_closed_and_recovers(
    database_url: str, db_engine: AsyncEngine, owned_redis: OwnedRedis
) -> None:
    settings = make_settings(database_url, owned_redis.url, redis_timeout_seconds=0.5)
    async with running_client(create_app(settings)) as http:
        account = await sign_up(http, "seller")
        token = await log_in(http, "seller", account["email"])
        headers = bearer(token)
        assert (await http.get("/seller/me", headers=headers)).status_code == 200

        refused_body = seller_body()
        owned_redis.stop()
        try:
            me = await http.get("/seller/me", headers=headers)
            login = await http.post(
                "/seller/token", data={"username": account["email"], "password": PASSWORD}
            )
            signup = await http.post("/seller/signup", json=refused_body)
            logout = await http.post("/seller/logout", headers=headers)
            ready = await http.get("/health/ready")
            live = await http.get("/health/live")
        finally:
            owned_redis.start()

        # Revocations cannot be checked, so a valid token is refused (never 200, never 500).
        assert_unavailable(me)
        assert_unavailable(login)
        assert_unavailable(signup)
        assert_unavailable(logout)
        assert "access_token" not in login.text
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "unavailable",
            "checks": {"postgres": "ok", "redis": "down"},
        }
        assert live.status_code == 200

        # Same socket, same app object: the client reconnects by itself.
        again = await http.get("/seller/me", headers=headers)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == account["id"]
        ready_again = await http.get("/health/ready")
        assert ready_again.status_code == 200
        assert ready_again.json()["checks"] == {"postgres": "ok", "redis": "ok"}
        # Nothing was stored by the sign-up that got a 503.
        async with db_engine.connect() as connection:
            stored = await connection.scalar(
                text("SELECT count(*) FROM sellers WHERE email = :email"),
                {"email": refused_body["email"]},
            )
        assert stored == 0
        fresh_login = await http.post(
            "/seller/token", data={"username": account["email"], "password": PASSWORD}
        )
        assert fresh_login.status_code == 200

        # Revocation works against the restarted server: logout, and the token is dead at once.
        assert (await http.post("/seller/logout", headers=headers)).status_code == 204
        revoked = await http.get("/seller/me", headers=headers)
        assert revoked.status_code == 401
        assert revoked.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert revoked.headers["content-type"].startswith(PROBLEM)


async def test_revoked_token_is_refused_while_redis_is_down(
    database_url: str, owned_redis: OwnedRedis
) -> None:
    settings = make_settings(database_url, owned_redis.url, redis_timeout_seconds=0.5)
    async with running_client(create_app(settings)) as http:
        account = await sign_up(http, "seller")
        headers = bearer(await log_in(http, "seller", account["email"]))
        assert (await http.post("/seller/logout", headers=headers)).status_code == 204
        assert (await http.get("/seller/me", headers=headers)).status_code == 401

        owned_redis.stop()
        try:
            # The revocation list cannot be read: the revoked token must not slip through.
            responses = [await http.get("/seller/me", headers=headers) for _ in range(3)]
        finally:
            owned_redis.start()
        for response in responses:
            assert_unavailable(response)


async def test_partner_routes_fail_closed_when_redis_is_down(
    database_url: str, owned_redis: OwnedRedis
) -> None:
    settings = make_settings(database_url, owned_redis.url, redis_timeout_seconds=0.5)
    async with running_client(create_app(settings)) as http:
        partner = await sign_up(http, "partner")
        headers = bearer(await log_in(http, "partner", partner["email"]))
        owned_redis.stop()
        try:
            me = await http.get("/partner/me", headers=headers)
            patch = await http.patch(
                "/partner/me", headers=headers, json={"max_handling_capacity": 99}
            )
        finally:
            owned_redis.start()
        assert_unavailable(me)
        assert_unavailable(patch)
        # The refused change was not applied.
        after = await http.get("/partner/me", headers=headers)
        assert after.status_code == 200
        assert after.json()["max_handling_capacity"] == partner["max_handling_capacity"]


async def test_requests_without_credentials_still_get_401_when_redis_is_down(
    database_url: str, owned_redis: OwnedRedis
) -> None:
    # No token to check, so no reason to blame Redis: the client learns it must authenticate.
    settings = make_settings(database_url, owned_redis.url, redis_timeout_seconds=0.5)
    async with running_client(create_app(settings)) as http:
        owned_redis.stop()
        try:
            response = await http.get("/seller/me")
        finally:
            owned_redis.start()
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"


def unreachable_database_settings(redis_url: str, **overrides: object) -> Settings:
    """Settings whose PostgreSQL refuses every connection, with short deadlines."""
    dead_database = f"postgresql+asyncpg://postgres@127.0.0.1:{unused_tcp_port()}/shiptrack"
    return make_settings(
        dead_database,
        redis_url,
        db_connect_timeout_seconds=1.0,
        db_pool_timeout_seconds=1.0,
        **overrides,
    )


async def test_postgres_outage_gives_503_never_500(redis_url: str) -> None:
    settings = unreachable_database_settings(redis_url, health_check_timeout_seconds=1.0)
    async with running_client(create_app(settings)) as http:
        signup = await http.post("/seller/signup", json=seller_body())
        login = await http.post(
            "/seller/token", data={"username": "someone@example.com", "password": PASSWORD}
        )
        anonymous = await http.get("/partner/me")
        ready = await http.get("/health/ready")
        live = await http.get("/health/live")

    assert_unavailable(signup)
    assert_unavailable(login)
    assert anonymous.status_code == 401  # no token: refused before any query
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "checks": {"postgres": "down", "redis": "ok"},
    }
    assert live.status_code == 200


async def test_logins_refused_by_a_postgres_outage_spend_no_attempts(redis_url: str) -> None:
    """A user retrying through an outage is not locked out once the database is back."""
    settings = unreachable_database_settings(
        redis_url, token_attempts_per_account=2, token_attempts_per_ip=2
    )
    form = {"username": "someone@example.com", "password": PASSWORD}
    async with running_client(create_app(settings)) as http:
        responses = [await http.post("/seller/token", data=form) for _ in range(4)]
    for response in responses:
        assert_unavailable(response)  # never 429


async def test_postgres_outage_with_a_valid_token_gives_503(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    # A token issued by a healthy replica, presented to one whose database is unreachable.
    account = await sign_up(client, "seller")
    headers = bearer(await log_in(client, "seller", account["email"]))
    settings = unreachable_database_settings(redis_url)
    async with running_client(create_app(settings)) as http:
        response = await http.get("/seller/me", headers=headers)
    assert_unavailable(response)
    assert account["email"] not in response.text


async def test_a_redis_that_refuses_writes_is_a_503_not_a_500(
    database_url: str, owned_redis: OwnedRedis
) -> None:
    settings = make_settings(database_url, owned_redis.url)
    app = create_app(settings)
    async with running_client(app) as http:
        account = await sign_up(http, "seller")
        # Full and not allowed to evict: every write fails (OOM), as after a misconfiguration.
        await app_context(app).redis.config_set("maxmemory", 1)
        await app_context(app).redis.config_set("maxmemory-policy", "noeviction")

        response = await http.post(
            "/seller/token", data={"username": account["email"], "password": PASSWORD}
        )

        assert response.status_code == 503, response.text
        assert response.json()["code"] == "service_unavailable"


async def test_pooled_connections_closed_by_postgres_are_replaced_unseen(
    database_url: str, redis_url: str, db_engine: AsyncEngine
) -> None:
    """What a PostgreSQL restart leaves in the pool: connections the server has hung up on.

    There is no ping per checkout; such a connection is noticed as closed and replaced, so the
    next request succeeds instead of failing on it.
    """
    settings = make_settings(database_url, redis_url, db_pool_size=1, db_max_overflow=0)
    app = create_app(settings)
    async with running_client(app) as http:
        account = await sign_up(http, "seller")
        headers = bearer(await log_in(http, "seller", account["email"]))
        assert (await http.get("/shipments", headers=headers)).status_code == 200
        async with app_context(app).engine.connect() as pooled:
            pid = (await pooled.execute(text("SELECT pg_backend_pid()"))).scalar_one()

        async with db_engine.connect() as admin:
            # Waits (up to 5 s) until the server process has exited, as after a restart.
            ended = await admin.execute(
                text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}
            )
            assert ended.scalar_one() is True

        for _ in range(3):
            response = await http.get("/shipments", headers=headers)
            assert response.status_code == 200, response.text
        async with app_context(app).engine.connect() as pooled:
            assert (await pooled.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid


async def test_a_server_hang_up_between_statements_answers_503(
    database_url: str, redis_url: str, db_engine: AsyncEngine
) -> None:
    """PostgreSQL ends a session (a fast restart, `pg_terminate_backend`) while a request is
    between two statements of its transaction. Its "terminating connection" message can reach
    asyncpg a loop turn before the hang-up does; the next statement then meets a connection
    still busy with that message. The request gets a 503, and the next one a new connection.
    """
    settings = make_settings(database_url, redis_url, db_pool_size=1, db_max_overflow=0)
    app = create_app(settings)
    backend_pid = select(func.pg_backend_pid())

    async def hung_up_on(request: Request) -> dict[str, int]:
        pid = await unit_of_work_of(request).session.scalar(backend_pid)
        assert pid is not None
        async with db_engine.connect() as admin:
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        # The loop stands still while the message and the hang-up both arrive; the next turn
        # reads the message, and this request runs before asyncpg handles the hang-up.
        time.sleep(0.5)  # noqa: ASYNC251 - blocking the loop is the point
        await asyncio.sleep(0)
        return {"pid": pid}

    router = APIRouter(route_class=UnitOfWorkRoute)
    router.add_api_route("/test/hung-up-on", hung_up_on)
    app.include_router(router)
    async with running_client(app) as http:
        account = await sign_up(http, "seller")
        headers = bearer(await log_in(http, "seller", account["email"]))
        assert_unavailable(await http.get("/test/hung-up-on"))
        response = await http.get("/shipments", headers=headers)
        assert response.status_code == 200, response.text
