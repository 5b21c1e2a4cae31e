"""Exception handlers: every failure becomes a problem+json document (backend/errors.py).

FastAPI's validation errors, Starlette's HTTP errors, PostgreSQL and Redis outages and
unexpected bugs all answer in the same shape as domain errors, with the request id, and never
echo client input.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from backend.db import driver_errors
from backend.errors import (
    DependencyUnavailable,
    DomainError,
    UnsupportedMediaType,
    handle_domain_error,
    problem_response,
    scrub_text,
)

logger = logging.getLogger(__name__)


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


# PostgreSQL ended or refused the session: connection exceptions (class 08), an operator or
# a restart (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now, 57P04
# database dropped, 57P05 idle session timeout), a statement or idle-in-transaction deadline
# (57014, 25P03), or no connection slot left (53300).
_OUTAGE_SQLSTATES = {"57P01", "57P02", "57P03", "57P04", "57P05", "57014", "25P03", "53300"}
# Failures on the client's side of the connection, which carry no SQLSTATE: the socket's own
# (a refused connection, a client-side deadline: TimeoutError is an OSError), a connection
# asyncpg no longer considers usable, or one still busy with the server's "terminating
# connection" message when the next statement came (asyncpg notices a hang-up a turn later).
_CLIENT_SIDE_OUTAGES = (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _is_database_outage(exc: Exception) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    sqlstate = _sqlstate(exc)
    if sqlstate is not None and (sqlstate.startswith("08") or sqlstate in _OUTAGE_SQLSTATES):
        return True
    return any(isinstance(error, _CLIENT_SIDE_OUTAGES) for error in driver_errors(exc))


# PostgreSQL rolled the transaction back to settle a conflict with a concurrent one: nothing
# was changed, and the same request may well succeed when sent again.
_RETRYABLE_SQLSTATES = {
    "40P01": "deadlock_detected",
    "40001": "serialization_failure",
}


def _sqlstate(exc: Exception) -> str | None:
    for error in driver_errors(exc):
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str):
            return sqlstate
    return None


async def handle_database_error(request: Request, exc: Exception) -> Response:
    sqlstate = _sqlstate(exc)
    if sqlstate in _RETRYABLE_SQLSTATES:
        logger.warning("transaction rolled back by PostgreSQL: %s", _RETRYABLE_SQLSTATES[sqlstate])
        return await handle_domain_error(
            request,
            DependencyUnavailable(
                "The change met a concurrent one and was rolled back; send it again."
            ),
        )
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
            type(driver_errors(exc)[0]).__name__,
            _sqlstate(exc),
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
    # What SQLAlchemy passes through unwrapped: asyncpg's client-side deadline
    # (command_timeout raises TimeoutError) and a refused or reset socket, all OSErrors.
    app.add_exception_handler(OSError, handle_network_error)
    # Any Redis failure (unreachable, full, read-only after a failover): fail closed with 503.
    app.add_exception_handler(RedisError, handle_redis_error)
    app.add_exception_handler(Exception, handle_unexpected_error)
