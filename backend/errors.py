"""One error hierarchy, rendered as RFC 9457 problem+json in one place.

Services raise `DomainError` subclasses and know nothing of HTTP; the handlers here turn them,
FastAPI's validation errors, Starlette's HTTP errors and dependency outages into problem
documents with a stable `code` and the request id. Nothing here ever echoes client input.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import compile_path

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
MAX_ECHOED_TEXT = 120


def problem_type(code: str) -> str:
    return f"urn:shiptrack:problem:{code}"


class DomainError(Exception):
    """An expected failure with a fixed HTTP status and a stable machine-readable code."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    # Shown in the API reference; instances may say more.
    default_detail: ClassVar[str] = "The request cannot be processed."
    # Commit the request's changes although it fails: for errors that record themselves (a
    # wrong delivery code counts towards burning it). Everything else rolls back.
    keep_changes: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.detail = detail or self.default_detail
        self.headers = dict(headers or {})
        self.extra = extra
        super().__init__(self.detail)


class Unauthorized(DomainError):
    status_code = 401
    code = "not_authenticated"
    title = "Not authenticated"
    default_detail = "Send a valid bearer token in the Authorization header."

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"
    title = "Not found"
    default_detail = "No such resource."


class Conflict(DomainError):
    status_code = 409
    code = "conflict"
    title = "Conflict"


class MalformedBody(DomainError):
    """Documents the 400 that FastAPI answers when a body cannot even be decoded (bytes that
    are not UTF-8, a broken multipart form); `handle_http_error` renders it with this code."""

    status_code = 400
    code = "bad_request"
    title = "Bad request"
    default_detail = "There was an error parsing the body."


class PayloadTooLarge(DomainError):
    status_code = 413
    code = "payload_too_large"
    title = "Payload too large"
    default_detail = "The request body is larger than this API accepts."


class HeadersTooLarge(DomainError):
    status_code = 431
    code = "headers_too_large"
    title = "Request header fields too large"
    default_detail = "The request headers are larger than this API accepts."


class UnsupportedMediaType(DomainError):
    status_code = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"
    default_detail = "Send the request body as application/json."


class RateLimited(DomainError):
    status_code = 429
    code = "rate_limited"
    title = "Too many requests"
    default_detail = "Too many attempts; retry after the number of seconds in Retry-After."

    def __init__(self, retry_after_seconds: int, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_seconds))})


class DependencyUnavailable(DomainError):
    status_code = 503
    code = "service_unavailable"
    title = "Service unavailable"
    default_detail = "A backing service is unreachable; retry shortly."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


# Documentation model of every error body, as rendered by `problem_response`.
class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    model_config = ConfigDict(title="Problem")

    type: str = Field(examples=[problem_type("not_found")])
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable error code (snake_case).")
    request_id: str | None = Field(description="Also in the X-Request-ID response header.")
    errors: list[ValidationIssue] | None = Field(
        default=None, description="Present on validation errors only."
    )


PROBLEM_SCHEMA_REF = {"$ref": "#/components/schemas/Problem"}


def scrub_text(value: str) -> str:
    """Make client-derived text (field names, parser messages) safe to print back."""
    printable = "".join(ch if ch.isprintable() else "\ufffd" for ch in value[:MAX_ECHOED_TEXT])
    return printable.encode("utf-8", "replace").decode("utf-8")


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": getattr(request.state, "request_id", None),
        **extra,
    }
    return Response(
        json.dumps(body, ensure_ascii=False, allow_nan=False).encode(),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


async def handle_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return problem_response(
        request,
        status=exc.status_code,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        headers=exc.headers,
        **exc.extra,
    )


def _validation_issues(errors: Sequence[Any]) -> list[dict[str, Any]]:
    issues = []
    for error in errors:
        loc = [part if isinstance(part, int) else scrub_text(str(part)) for part in error["loc"]]
        message = str(error.get("msg", "Invalid value"))
        if error.get("type") == "json_invalid" and "error" in error.get("ctx", {}):
            message = f"Invalid JSON: {error['ctx']['error']}"
        issues.append({"loc": loc, "msg": scrub_text(message), "type": str(error.get("type"))})
    return issues


def _is_json_content_type(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type == "application/json" or content_type.endswith("+json")


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # FastAPI hands a non-JSON body to the model as raw bytes; say what is actually wrong.
    body_not_an_object = any(
        tuple(error["loc"]) == ("body",) and error["type"] == "model_attributes_type"
        for error in errors
    )
    if body_not_an_object and not _is_json_content_type(request):
        return await handle_domain_error(request, UnsupportedMediaType())
    return problem_response(
        request,
        status=422,
        code="validation_failed",
        title="Validation failed",
        detail="The request is not valid; see `errors` for each problem.",
        errors=_validation_issues(errors),
    )


_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("not_authenticated", "Not authenticated"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


async def handle_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        detail = "No such resource."
    else:
        detail = scrub_text(str(exc.detail)) if exc.detail else title
    if exc.status_code == 405:
        # Starlette names the methods of the first matching route only (RFC 9110 wants all).
        headers["Allow"] = ", ".join(_methods_of_path(request))
    return problem_response(
        request, status=exc.status_code, code=code, title=title, detail=detail, headers=headers
    )


def _methods_of_path(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        path_format = getattr(route, "path_format", None)
        if path_format and compile_path(path_format)[0].match(request.url.path):
            methods.update(route.methods or ())
    return sorted(methods)


def _is_database_outage(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    # asyncpg's connection errors, timeouts and server-side cancellations (statement_timeout).
    names = {type(exc.orig).__name__, type(getattr(exc.orig, "__cause__", None)).__name__}
    outage_names = {
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        "InterfaceError",
        "CannotConnectNowError",
        "QueryCanceledError",
        "AdminShutdownError",
        "TooManyConnectionsError",
        "TimeoutError",
        "ConnectionRefusedError",
        "OSError",
    }
    return bool(names & outage_names)


async def handle_database_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, DBAPIError) and not _is_database_outage(exc):
        return await handle_unexpected_error(request, exc)
    logger.warning("database unavailable: %s", type(exc).__name__)
    return await handle_domain_error(
        request, DependencyUnavailable("The database is unavailable; retry shortly.")
    )


async def handle_network_error(request: Request, exc: Exception) -> Response:
    """A socket-level failure talking to a backing service that no other handler claimed."""
    logger.warning("backing service unreachable: %s", type(exc).__name__)
    return await handle_domain_error(request, DependencyUnavailable())


async def handle_redis_error(request: Request, exc: Exception) -> Response:
    logger.warning("redis unavailable: %s", type(exc).__name__)
    return await handle_domain_error(
        request, DependencyUnavailable("The session store is unavailable; retry shortly.")
    )


async def handle_unexpected_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, DBAPIError):
        # PostgreSQL's and asyncpg's messages may quote a bound value (`invalid input syntax for
        # type integer: "..."`), which hide_parameters cannot reach: log the error's kind, its
        # SQLSTATE and where it was raised, never its text.
        logger.error(
            "unhandled database error: %s (SQLSTATE %s)\n%s",
            type(exc.orig).__name__,
            getattr(exc.orig, "sqlstate", None),
            "".join(traceback.format_tb(exc.__traceback__)),
        )
    else:
        logger.exception("unhandled error", exc_info=exc)
    request_id = getattr(request.state, "request_id", None)
    return problem_response(
        request,
        status=500,
        code="internal_error",
        title="Internal server error",
        detail="Something went wrong on our side; the request id helps us find it.",
        # Rendered outside the request middleware, so the id header is added here.
        headers={"X-Request-ID": request_id} if request_id else None,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, handle_domain_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(DBAPIError, handle_database_error)
    app.add_exception_handler(PoolTimeoutError, handle_database_error)
    app.add_exception_handler(OSError, handle_network_error)
    # Any Redis failure (unreachable, full, read-only after a failover): fail closed with 503.
    app.add_exception_handler(RedisError, handle_redis_error)
    app.add_exception_handler(Exception, handle_unexpected_error)


def problem_responses(*errors: type[DomainError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the domain errors a route can raise, with examples."""
    by_status: dict[int, list[type[DomainError]]] = {}
    for error in errors:
        by_status.setdefault(error.status_code, []).append(error)
    return {status: _problem_doc(status, group) for status, group in by_status.items()}


def _problem_doc(status: int, errors: Sequence[type[DomainError]]) -> dict[str, Any]:
    examples = {
        error.code: {
            "summary": error.title,
            "value": {
                "type": problem_type(error.code),
                "title": error.title,
                "status": status,
                "detail": error.default_detail,
                "code": error.code,
                "request_id": "5f0c6f55d8a84c2e9b1f0c3e8d2a7b41",
            },
        }
        for error in errors
    }
    # The schema is referenced, not given as `model`: FastAPI would file a model under the
    # route's own media type (application/json) instead of problem+json.
    return {
        "description": " / ".join(error.title for error in errors),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA_REF, "examples": examples}},
    }
