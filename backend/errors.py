"""One error hierarchy, rendered as RFC 9457 problem+json in one place.

Services raise `DomainError` subclasses and know nothing of HTTP. This module renders them as
problem documents with a stable `code` and the request id, and documents them in the OpenAPI
schema; backend/error_handlers.py turns everything else (validation errors, HTTP errors,
dependency outages, bugs) into the same documents. Nothing here ever echoes client input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

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


def problem_document(error: DomainError) -> dict[str, Any]:
    """The problem a domain error would answer alone, as one part of a larger answer (one
    scan of a batch): no request id, which the response's header carries."""
    return {
        "type": problem_type(error.code),
        "title": error.title,
        "status": error.status_code,
        "detail": error.detail,
        "code": error.code,
        **error.extra,
    }


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
