"""Liveness, readiness (including draining on shutdown) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from backend.cli import DrainingServer
from backend.context import app_context
from backend.main import create_app
from tests.assertions import assert_problem
from tests.conftest import METRICS_TOKEN, OwnedRedis, make_settings, running_client
from tests.factories import account_with_token, api_key_headers

REQUESTS_METRIC = "shiptrack_http_requests"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def unused_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def draining(app: FastAPI) -> Iterator[None]:
    app_context(app).draining = True
    try:
        yield
    finally:
        app_context(app).draining = False


def request_count(exposition: str, method: str, route: str, status: str) -> float:
    return request_counts(exposition).get((method, route, status), 0.0)


def request_counts(exposition: str, mode: str = "live") -> dict[tuple[str, str, str], float]:
    """(method, route, status) -> requests of `mode` (live or test traffic) counted so far."""
    return {
        (sample.labels["method"], sample.labels["route"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name == REQUESTS_METRIC
        for sample in family.samples
        if sample.name == f"{REQUESTS_METRIC}_total" and sample.labels["mode"] == mode
    }


def route_labels(exposition: str) -> set[str]:
    return {
        sample.labels["route"]
        for family in text_string_to_metric_families(exposition)
        if family.name == REQUESTS_METRIC
        for sample in family.samples
        if "route" in sample.labels
    }


async def test_liveness_is_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


async def test_liveness_checks_no_dependency(tmp_path: Path) -> None:
    # Neither PostgreSQL nor Redis exists behind these URLs: liveness must not care.
    dead_database = f"postgresql+asyncpg://postgres@127.0.0.1:{unused_tcp_port()}/nothing"
    dead_redis = f"unix://{(tmp_path / 'no-redis.sock').resolve()}"
    settings = make_settings(
        dead_database,
        dead_redis,
        db_connect_timeout_seconds=0.5,
        health_check_timeout_seconds=0.5,
        redis_timeout_seconds=0.5,
    )
    async with running_client(create_app(settings)) as http:
        live = await http.get("/health/live")
        ready = await http.get("/health/ready")
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    # The same app's readiness does notice: the URLs really are dead.
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "checks": {"postgres": "down", "redis": "down"},
    }


async def test_readiness_reports_each_dependency_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}
    assert response.headers["cache-control"] == "no-store"


async def test_readiness_says_saturated_not_down_while_the_request_pools_are_full(
    database_url: str, redis_url: str
) -> None:
    settings = make_settings(
        database_url,
        redis_url,
        db_pool_size=2,
        db_max_overflow=0,
        db_pool_timeout_seconds=0.5,
        redis_max_connections=2,
        redis_timeout_seconds=0.5,
    )
    app = create_app(settings)
    async with running_client(app) as http:
        _, headers = await account_with_token(http, "seller")
        context = app_context(app)
        engine, pool = context.engine, context.redis.connection_pool
        # Every connection of both request pools is busy (held here, as long requests would).
        async with engine.connect(), engine.connect():
            # redis-py leaves this one untyped.
            redis_connections = [
                await pool.get_connection()  # type: ignore[no-untyped-call]
                for _ in range(2)
            ]
            try:
                busy = await http.get("/health/ready")
                # A request meanwhile waits for a connection, then gets a 503.
                waiting = await http.get("/seller/me", headers=headers)
            finally:
                for connection in redis_connections:
                    await pool.release(connection)
        after = await http.get("/health/ready")

    # Both dependencies answer: the replica is busy, not broken, and stays in rotation.
    assert busy.status_code == 200, busy.text
    assert busy.json() == {
        "status": "ready",
        "checks": {"postgres": "saturated", "redis": "saturated"},
    }
    assert waiting.status_code == 503
    assert after.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A loopback port that accepts connections and never answers (a frozen or black-holed
    dependency); yields the port."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        for writer in held:
            writer.close()
        server.close()


# Readiness answers within HEALTH_CHECK_TIMEOUT_SECONDS; this bound only guards against a hang.
READINESS_HANG_GUARD_SECONDS = 5.0


async def test_readiness_is_503_within_its_timeout_when_redis_is_stopped(
    database_url: str, owned_redis: OwnedRedis
) -> None:
    settings = make_settings(
        database_url, owned_redis.url, health_check_timeout_seconds=0.5, redis_timeout_seconds=0.5
    )
    async with running_client(create_app(settings)) as http:
        assert (await http.get("/health/ready")).status_code == 200
        owned_redis.stop()
        try:
            async with asyncio.timeout(READINESS_HANG_GUARD_SECONDS):
                stopped = await http.get("/health/ready")
        finally:
            owned_redis.start()
        back = await http.get("/health/ready")

    assert stopped.status_code == 503
    assert stopped.json() == {
        "status": "unavailable",
        "checks": {"postgres": "ok", "redis": "down"},
    }
    assert back.status_code == 200


async def test_readiness_answers_within_its_timeout_when_dependencies_hang(
    database_url: str, redis_url: str
) -> None:
    async with silent_server() as postgres_port, silent_server() as redis_port:
        hanging = make_settings(
            f"postgresql+asyncpg://postgres@127.0.0.1:{postgres_port}/shiptrack",
            f"redis://127.0.0.1:{redis_port}/0",
            health_check_timeout_seconds=0.5,
            # The request pools' own deadlines are longer than readiness's.
            db_connect_timeout_seconds=30,
            redis_timeout_seconds=2,
        )
        app = create_app(hanging)
        async with running_client(app) as http:
            async with asyncio.timeout(READINESS_HANG_GUARD_SECONDS):
                answers = [await http.get("/health/ready") for _ in range(3)]

    for answer in answers:
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "unavailable",
            "checks": {"postgres": "down", "redis": "down"},
        }


async def test_readiness_is_503_while_draining_and_recovers(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    with draining(app):
        during = await client.get("/health/ready")
        live_during = await client.get("/health/live")
    after = await client.get("/health/ready")

    assert during.status_code == 503
    assert during.json() == {
        "status": "draining",
        "checks": {"postgres": "ok", "redis": "ok"},
    }
    # Draining stops new traffic from the load balancer; it does not mean the process is dead.
    assert live_during.status_code == 200
    assert after.status_code == 200
    assert after.json()["status"] == "ready"


async def test_sigterm_handler_of_serve_turns_readiness_to_draining(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    # What `shiptrack serve` runs: uvicorn wraps the app (proxy headers), the server unwraps it.
    config = uvicorn.Config(
        app, proxy_headers=True, forwarded_allow_ips="127.0.0.1", log_config=None
    )
    config.load()
    assert config.loaded_app is not app  # really wrapped, so the unwrapping is exercised
    server = DrainingServer(config)
    assert (await client.get("/health/ready")).status_code == 200
    try:
        server.handle_exit(signal.SIGTERM, None)
        assert server.should_exit
        response = await client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "draining"
    finally:
        app_context(app).draining = False
    assert (await client.get("/health/ready")).status_code == 200


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics", headers=SCRAPER)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert REQUESTS_METRIC in names
    assert "shiptrack_http_request_duration_seconds" in names


async def test_metrics_need_the_scrapers_token(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/metrics")
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer guess"})
    almost = await client.get("/metrics", headers={"Authorization": METRICS_TOKEN})

    for refused in (anonymous, wrong, almost):
        assert_problem(refused, 401, "not_authenticated")
        assert refused.headers["www-authenticate"] == "Bearer"
        assert REQUESTS_METRIC not in refused.text


async def test_metrics_are_not_served_without_a_configured_token(
    database_url: str, redis_url: str
) -> None:
    settings = make_settings(database_url, redis_url, metrics_token=None)
    async with running_client(create_app(settings)) as client:
        response = await client.get("/metrics", headers=SCRAPER)
        unknown = await client.get("/no-such-page")

    # Indistinguishable from a path that does not exist.
    assert_problem(response, 404, "not_found")
    assert response.json()["detail"] == unknown.json()["detail"]
    assert REQUESTS_METRIC not in response.text


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics", headers=SCRAPER)).text

    _, headers = await account_with_token(client, "seller")
    for _ in range(3):
        assert (await client.get("/seller/me", headers=headers)).status_code == 200
    assert (await client.get("/seller/me")).status_code == 401
    probe_id = uuid.uuid4().hex
    assert (await client.get(f"/no-such-resource/{probe_id}")).status_code == 404
    assert (await client.get(f"/shipments/{uuid.UUID(probe_id)}")).status_code == 401

    after = (await client.get("/metrics", headers=SCRAPER)).text
    assert "shiptrack_http_requests_total{" in after

    def delta(method: str, route: str, status: str) -> float:
        return request_count(after, method, route, status) - request_count(
            before, method, route, status
        )

    assert delta("GET", "/seller/me", "200") == 3
    assert delta("GET", "/seller/me", "401") == 1
    assert delta("POST", "/seller/signup", "201") == 1
    assert delta("POST", "/seller/token", "200") == 1
    # A path that matched no route is counted under one label, never under its raw path.
    assert delta("GET", "unmatched", "404") == 1
    assert delta("GET", "/shipments/{shipment_id}", "401") == 1
    assert probe_id not in after
    routes = route_labels(after)
    assert all(route.startswith("/") or route == "unmatched" for route in routes), routes
    assert not any(probe_id in route for route in routes)


async def test_test_key_traffic_stays_out_of_the_live_series(client: httpx.AsyncClient) -> None:
    _, headers = await account_with_token(client, "seller")
    test_key = await api_key_headers(client, headers, mode="test", scopes=["shipments:read"])
    before = (await client.get("/metrics", headers=SCRAPER)).text

    for _ in range(4):
        response = await client.get("/shipments", headers=test_key)
        assert response.status_code == 200
    assert (await client.get("/shipments", headers=headers)).status_code == 200

    after = (await client.get("/metrics", headers=SCRAPER)).text
    key = ("GET", "/shipments", "200")
    live = request_counts(after).get(key, 0) - request_counts(before).get(key, 0)
    test = request_counts(after, "test").get(key, 0) - request_counts(before, "test").get(key, 0)
    assert (live, test) == (1, 4)


async def test_metrics_label_templated_routes_not_raw_paths(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    # Whatever path is asked for, the label is a path template of the app or "unmatched".
    before = request_counts((await client.get("/metrics", headers=SCRAPER)).text)
    raw_paths = [
        "/seller/me",
        f"/track/{uuid.uuid4().hex}",
        f"/shipments/{uuid.uuid4()}",
        f"/seller/{uuid.uuid4()}",
        "/health/live",
    ]
    for path in raw_paths:
        await client.get(path)
    after = request_counts((await client.get("/metrics", headers=SCRAPER)).text)

    # Documented routes plus the undocumented ones (metrics, the reference pages).
    templates = set(app.openapi()["paths"]) | {"/metrics", "/scalar", "/openapi.json", "/docs"}
    assert "/seller/me" in templates
    counted = {key for key, value in after.items() if value > before.get(key, 0.0)}
    counted_routes = {route for (_method, route, _status) in counted}
    assert {"/seller/me", "/health/live"} <= counted_routes
    for route in counted_routes:
        assert route == "unmatched" or route in templates, route
    assert sum(after[key] - before.get(key, 0.0) for key in counted) >= len(raw_paths)
