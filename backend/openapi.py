"""The OpenAPI document: two OAuth2 password schemes and API keys, each operation's `security`
derived from the auth dependency the route actually uses, and the problem responses that its
dependencies and request body imply (401/403/429/503, 413/415, 422 as problem+json)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from backend.auth_schemes import (
    API_KEY_AUTH,
    SECURITY_SCHEMES,
    SecurityRequirement,
    security_of,
)
from backend.db import UnitOfWorkRoute
from backend.errors import (
    PROBLEM_MEDIA_TYPE,
    PROBLEM_SCHEMA_REF,
    DependencyUnavailable,
    DomainError,
    Forbidden,
    MalformedBody,
    PayloadTooLarge,
    Problem,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
    problem_responses,
)
from backend.redis_client import get_redis
from backend.request_body import refuse_request_body

# Errors any authenticated route can answer with.
_AUTH_ERRORS: tuple[type[DomainError], ...] = (Unauthorized, Forbidden, DependencyUnavailable)
# Errors a route can answer with because of a dependency it uses (directly or not).
_DEPENDENCY_ERRORS: dict[Callable[..., Any], tuple[type[DomainError], ...]] = {
    get_redis: (DependencyUnavailable,),
    refuse_request_body: (PayloadTooLarge, UnsupportedMediaType),
}


def operation_id(route: APIRoute) -> str:
    """A route's operation id: its handler's name. `build_openapi` checks that they are unique."""
    return route.name


def _dependency_calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _dependency_calls(sub)


def route_security(dependant: Dependant) -> list[SecurityRequirement]:
    """The security of the first registered auth dependency found in a route's dependencies."""
    for call in _dependency_calls(dependant):
        security = security_of(call)
        if security is not None:
            return security
    return []


def _implied_errors(
    route: RouteContext, security: list[SecurityRequirement]
) -> list[type[DomainError]]:
    """Errors a route can answer with, whatever its handler does, given what it depends on."""
    errors: list[type[DomainError]] = list(_AUTH_ERRORS) if security else []
    if any(API_KEY_AUTH in requirement for requirement in security):
        errors.append(RateLimited)  # each key's requests per second
    if isinstance(route.original_route, UnitOfWorkRoute) and DependencyUnavailable not in errors:
        # Its unit of work needs PostgreSQL; only such routes can reach the database.
        errors.append(DependencyUnavailable)
    for call in _dependency_calls(route.dependant):
        errors.extend(error for error in _DEPENDENCY_ERRORS.get(call, ()) if error not in errors)
    return errors


def _body_errors(operation: dict[str, Any]) -> list[type[DomainError]]:
    body_types = operation.get("requestBody", {}).get("content", {})
    if not body_types:
        return []
    # Only JSON routes answer a body of another type with 415; forms validate field by field.
    return (
        [MalformedBody, PayloadTooLarge, UnsupportedMediaType]
        if "application/json" in body_types
        else [MalformedBody, PayloadTooLarge]
    )


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
        webhooks=app.webhooks.routes,
        tags=app.openapi_tags,
        servers=app.servers,
    )
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for route in _documented_routes(app):
        security = route_security(route.dependant)
        errors = _implied_errors(route, security)
        for method in route.methods or ():
            operation = schema["paths"][route.path_format].get(method.lower())
            if operation is None:
                continue
            operation["security"] = security
            _add_missing_responses(operation, problem_responses(*errors, *_body_errors(operation)))
            _describe_validation_errors_as_problems(operation)
    for webhook in schema.get("webhooks", {}).values():
        for operation in webhook.values():
            # Sent by us: the receiver's answer is any 2xx, and it never sees our 422.
            operation["responses"] = {"2XX": {"description": "Delivery acknowledged."}}
    schemas = schema["components"].setdefault("schemas", {})
    for default_schema in ("HTTPValidationError", "ValidationError"):
        schemas.pop(default_schema, None)
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    schema["paths"] = _in_section_order(schema["paths"], app.openapi_tags or [])
    _check_unique_operation_ids(schema)
    app.openapi_schema = schema
    return schema


def _check_unique_operation_ids(schema: dict[str, Any]) -> None:
    """Two operations with one id would be one function in a generated client."""
    seen: set[str] = set()
    for section in ("paths", "webhooks"):
        for item in schema.get(section, {}).values():
            for operation in item.values():
                if not isinstance(operation, dict) or "operationId" not in operation:
                    continue
                if operation["operationId"] in seen:
                    raise RuntimeError(f"two operations have the id {operation['operationId']}")
                seen.add(operation["operationId"])


def _in_section_order(
    paths: dict[str, dict[str, Any]], sections: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Paths in the order of their sections (`openapi_tags`), each section's in route order.

    Routers are included busiest first, for matching; readers and client generators should
    meet the operations in the order the reference explains them, sign-up first.
    """
    rank = {section["name"]: position for position, section in enumerate(sections)}

    def section_of(item: tuple[str, dict[str, Any]]) -> int:
        tags = [tag for operation in item[1].values() for tag in operation.get("tags", [])]
        return min((rank.get(tag, len(rank)) for tag in tags), default=len(rank))

    return dict(sorted(paths.items(), key=section_of))


def _documented_routes(app: FastAPI) -> Iterator[RouteContext]:
    # Route contexts carry the dependencies of every router a route was included through.
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.include_in_schema:
            yield context


_VALIDATION_EXAMPLE = {
    "type": "urn:shiptrack:problem:validation_failed",
    "title": "Validation failed",
    "status": 422,
    "detail": "The request is not valid; see `errors` for each problem.",
    "code": "validation_failed",
    "request_id": "5f0c6f55d8a84c2e9b1f0c3e8d2a7b41",
    "errors": [
        {
            "loc": ["body", "email"],
            "msg": "value is not a valid email address",
            "type": "value_error",
        }
    ],
}


def _describe_validation_errors_as_problems(operation: dict[str, Any]) -> None:
    """FastAPI documents 422 with its own error model; ours is problem+json.

    A route's own 422s (say `idempotency_key_reused`) stay documented beside validation.
    """
    responses = operation.get("responses", {})
    if "422" not in responses:
        return
    own = responses["422"].get("content", {}).get(PROBLEM_MEDIA_TYPE, {}).get("examples", {})
    validation = {"summary": "Validation failed", "value": _VALIDATION_EXAMPLE}
    titles = ["Validation failed", *(example["summary"] for example in own.values())]
    responses["422"] = {
        "description": " / ".join(titles),
        "content": {
            PROBLEM_MEDIA_TYPE: {
                "schema": PROBLEM_SCHEMA_REF,
                "examples": {"validation_failed": validation, **own},
            }
        },
    }


def _add_missing_responses(
    operation: dict[str, Any], responses: dict[int | str, dict[str, Any]]
) -> None:
    documented = operation.setdefault("responses", {})
    for status, spec in responses.items():
        documented.setdefault(str(status), spec)
