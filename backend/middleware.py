"""Pure ASGI middleware: request ids, timing, access log and request metrics."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid

from prometheus_client import Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import (
    DependencyUnavailable,
    DomainError,
    HeadersTooLarge,
    PayloadTooLarge,
    handle_domain_error,
)
from backend.logging_setup import request_id_var

access_logger = logging.getLogger("shiptrack.access")

# A client-supplied id is echoed only when it is short and plain; anything else is replaced.
_ACCEPTABLE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# `mode` keeps test traffic (API test keys, product.md §11.2) out of the live series: "test"
# for a request authenticated with a test key, "live" for everything else.
REQUESTS = Counter(
    "shiptrack_http_requests_total",
    "HTTP requests by route, status and mode (live or test)",
    ["method", "route", "status", "mode"],
)
LATENCY = Histogram(
    "shiptrack_http_request_duration_seconds",
    "HTTP request latency by route and mode (live or test)",
    ["method", "route", "mode"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# The labelled series, looked up once per (method, route, status, mode), not on every request.
@functools.cache
def _request_counter(method: str, route: str, status: int, mode: str) -> Counter:
    return REQUESTS.labels(method, route, str(status), mode)


@functools.cache
def _latency_histogram(method: str, route: str, mode: str) -> Histogram:
    return LATENCY.labels(method, route, mode)


def _mode_label(scope: Scope) -> str:
    # The caller authentication left in the request's state, if the request got that far.
    caller = scope.get("state", {}).get("caller")
    return "live" if getattr(caller, "livemode", True) else "test"


def _route_label(scope: Scope) -> str:
    # The route template, never the raw path: ids in paths would explode the label cardinality.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id = self._request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers["X-Process-Time"] = f"{time.perf_counter() - started:.6f}"
                # Browsers must take every answer as the type it says it is (never sniff a
                # JSON error or a stored text into HTML or script).
                headers.append("X-Content-Type-Options", "nosniff")
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except asyncio.CancelledError:
            # uvicorn cancels requests still running when its graceful shutdown times out and
            # would answer a bare text 500. Their transaction was rolled back, so tell the
            # client to retry (another replica) instead.
            if response_started:
                raise
            shutting_down = DependencyUnavailable("The server is shutting down; retry the request.")
            response = await handle_domain_error(Request(scope), shutting_down)
            await response(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            method = scope["method"]
            route = _route_label(scope)
            mode = _mode_label(scope)
            _request_counter(method, route, status, mode).inc()
            _latency_histogram(method, route, mode).observe(elapsed)
            if access_logger.isEnabledFor(logging.INFO):
                access_logger.info(
                    "%s %s %s %.1fms",
                    method,
                    scope["path"],
                    status,
                    elapsed * 1000,
                    extra={
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(token)

    @staticmethod
    def _request_id(scope: Scope) -> str:
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate: str = value.decode("latin-1")
                if _ACCEPTABLE_REQUEST_ID.match(candidate):
                    return candidate
                break
        return uuid.uuid4().hex


class RequestLimitsMiddleware:
    """Refuse requests over the size limits, in problem+json like every other error.

    Headers: the whole block over `max_header_bytes`, or more than `max_header_count` fields,
    gets 431 (uvicorn's httptools parser has no limit of its own). Bodies over `max_body_bytes`
    get 413, whether announced by Content-Length or streamed chunked (Starlette's own limiter
    answers in plain text).
    """

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, max_header_bytes: int, max_header_count: int
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_header_count = max_header_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            response = await handle_domain_error(Request(scope), refusal)
            await response(scope, receive, send)
            return
        await self.app(scope, self._receive_within_limit(receive), send)

    def _refusal(self, scope: Scope) -> DomainError | None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        # One pass over the raw headers (ASGI names them in lower case): every request runs it.
        size, declared = 0, None
        for name, value in headers:
            size += len(name) + len(value)
            if name == b"content-length" and declared is None:
                declared = value
        if len(headers) > self.max_header_count or size > self.max_header_bytes:
            return HeadersTooLarge(
                f"Send at most {self.max_header_count} header fields and "
                f"{self.max_header_bytes} bytes of headers."
            )
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return self._body_too_large()
        return None

    def _body_too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body must not exceed {self.max_body_bytes} bytes.")

    def _receive_within_limit(self, receive: Receive) -> Receive:
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # FastAPI's body reader lets only HTTPException through (anything else
                    # becomes a 400); the error handlers render it as payload_too_large.
                    raise HTTPException(status_code=413, detail=self._body_too_large().detail)
            return message

        return receive_within_limit
