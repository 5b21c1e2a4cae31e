"""The API's authentication schemes, and the mark that ties an auth dependency to them.

Auth dependencies (accounts, shipments) mark themselves with `@requires_auth(...)`; the OpenAPI
builder (backend/openapi.py) reads the marks to give each operation its `security`. They live
here, below every domain package, so that domain code never imports the builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

SELLER_AUTH = "sellerAuth"
PARTNER_AUTH = "partnerAuth"

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    SELLER_AUTH: {
        "type": "oauth2",
        "description": "Seller access token from `POST /seller/token` (email + password).",
        "flows": {"password": {"tokenUrl": "/seller/token", "scopes": {}}},
    },
    PARTNER_AUTH: {
        "type": "oauth2",
        "description": "Delivery partner access token from `POST /partner/token`.",
        "flows": {"password": {"tokenUrl": "/partner/token", "scopes": {}}},
    },
}

SecurityRequirement = dict[str, list[str]]
F = TypeVar("F", bound=Callable[..., Any])

# Auth dependency -> the alternatives (OR) that satisfy it, registered by `@requires_auth`.
_REQUIREMENTS: dict[Callable[..., Any], list[SecurityRequirement]] = {}


def requires_auth(*scheme_names: str) -> Callable[[F], F]:
    """Mark an auth dependency; any route depending on it documents these schemes."""

    def register(dependency: F) -> F:
        _REQUIREMENTS[dependency] = [{name: []} for name in scheme_names]
        return dependency

    return register


def security_of(dependency: Callable[..., Any]) -> list[SecurityRequirement] | None:
    """The security of a dependency marked with `requires_auth`; None for any other."""
    return _REQUIREMENTS.get(dependency)
