"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

router = APIRouter(tags=["Operations"])

CheckResult = Literal["ok", "down"]


class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}},
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


async def _postgres_ok(engine: AsyncEngine, limit_seconds: float) -> bool:
    try:
        async with asyncio.timeout(limit_seconds), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return True
    except Exception:  # any failure means "not ready"; the reason is not the caller's business
        return False


async def _redis_ok(request: Request, limit_seconds: float) -> bool:
    try:
        async with asyncio.timeout(limit_seconds):
            return bool(await request.app.state.redis.ping())
    except Exception:
        return False


@router.get(
    "/health/ready",
    response_model=Readiness,
    responses={
        503: {"model": Readiness, "description": "A dependency is down or the process is draining"}
    },
)
async def check_readiness(request: Request) -> JSONResponse:
    """Ready to take traffic: PostgreSQL and Redis answer within a short timeout, and the
    process is not shutting down. A load balancer should route only to ready replicas."""
    timeout = request.app.state.settings.health_check_timeout_seconds
    postgres, redis = await asyncio.gather(
        _postgres_ok(request.app.state.engine, timeout), _redis_ok(request, timeout)
    )
    checks: dict[str, CheckResult] = {
        "postgres": "ok" if postgres else "down",
        "redis": "ok" if redis else "down",
    }
    draining = getattr(request.app.state, "draining", False)
    if draining:
        readiness = Readiness(status="draining", checks=checks)
    else:
        readiness = Readiness(
            status="ready" if postgres and redis else "unavailable", checks=checks
        )
    status_code = 200 if readiness.status == "ready" else 503
    return JSONResponse(
        readiness.model_dump(), status_code=status_code, headers={"Cache-Control": "no-store"}
    )


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def export_metrics() -> Response:
    """Prometheus text exposition of this process's request counters and latencies."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
