"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac
from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict

from backend.context import context_of
from backend.errors import NotFound, Unauthorized
from backend.health.readiness import CheckResult, ReadinessProbe

router = APIRouter(tags=["Operations"])


class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}},
                {"status": "ready", "checks": {"postgres": "saturated", "redis": "ok"}},
                {"status": "unavailable", "checks": {"postgres": "ok", "redis": "down"}},
            ]
        }
    )

    status: Literal["ready", "unavailable", "draining"]
    checks: dict[str, CheckResult]


@router.get("/health/live", response_model=Liveness)
async def check_liveness() -> Liveness:
    """The process is up and serving. Checks no dependency, so a database blip restarts nothing."""
    return Liveness()


@router.get(
    "/health/ready",
    response_model=Readiness,
    responses={
        503: {"model": Readiness, "description": "A dependency is down or the process is draining"}
    },
)
async def check_readiness(request: Request) -> JSONResponse:
    """Ready to take traffic: PostgreSQL and Redis accept a new connection and answer within
    `HEALTH_CHECK_TIMEOUT_SECONDS`, and the process is not shutting down. A load balancer should
    route only to ready replicas.

    Each check uses a connection of its own, never one of the request pools. A dependency that
    answers while the request pool has no connection to spare is `saturated`: still ready (200),
    since a busy replica taken out of rotation only moves its load onto the others. `down`
    (503) means a new connection failed or no answer came within the timeout.
    """
    context = context_of(request)
    checks = await context.part(ReadinessProbe).check(context.engine, context.redis)
    reachable = "down" not in checks.values()
    if context.draining:
        readiness = Readiness(status="draining", checks=checks)
    else:
        readiness = Readiness(status="ready" if reachable else "unavailable", checks=checks)
    status_code = 200 if readiness.status == "ready" else 503
    return JSONResponse(
        readiness.model_dump(), status_code=status_code, headers={"Cache-Control": "no-store"}
    )


async def metrics_scraper(request: Request) -> None:
    """Let through only a scraper sending `Authorization: Bearer <METRICS_TOKEN>`. Without a
    token configured the route answers like one that does not exist."""
    settings = context_of(request).settings
    if settings.metrics_token is None:
        raise NotFound()
    expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
    sent = request.headers.get("authorization", "").encode()
    if not hmac.compare_digest(sent, expected):
        raise Unauthorized("Send the metrics token: Authorization: Bearer <METRICS_TOKEN>.")


@router.get(
    "/metrics",
    response_class=Response,
    include_in_schema=False,
    dependencies=[Depends(metrics_scraper)],
)
async def export_metrics() -> Response:
    """Prometheus text exposition of this process's request counters and latencies."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
