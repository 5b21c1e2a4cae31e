"""The API's authentication schemes, and the mark that ties an auth dependency to them.

Two OAuth2 password flows (access tokens of sellers and of partners) and API keys (HTTP bearer,
each requirement naming the key scope the operation needs: OpenAPI 3.1 lets any scheme list
roles).

Auth dependencies (accounts, shipments) mark themselves with `@requires_auth(...)`; the OpenAPI
builder (backend/openapi.py) reads the marks to give each operation its `security`. They live
here, below every domain package, so that domain code never imports the builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

SELLER_AUTH = "sellerAuth"
PARTNER_AUTH = "partnerAuth"
API_KEY_AUTH = "apiKey"

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
    API_KEY_AUTH: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "st_live_… or st_test_…",
        "description": "An API key from `POST /seller/api-keys` or `POST /partner/api-keys`, "
        "sent as `Authorization: Bearer st_…`. Each operation that takes keys names the scope "
        "it needs; a key without it gets 403 `insufficient_scope`. Test keys (`st_test_`) see "
        "and create only test data.",
    },
}

SecurityRequirement = dict[str, list[str]]
F = TypeVar("F", bound=Callable[..., Any])

# Auth dependency -> the alternatives (OR) that satisfy it, registered by `@requires_auth`.
_REQUIREMENTS: dict[Callable[..., Any], list[SecurityRequirement]] = {}


def requires_auth(*scheme_names: str, key_scope: str | None = None) -> Callable[[F], F]:
    """Mark an auth dependency; any route depending on it documents these schemes, and the
    API key scheme with the scope it needs when it also takes keys (`key_scope`)."""

    def register(dependency: F) -> F:
        requirements: list[SecurityRequirement] = [{name: []} for name in scheme_names]
        if key_scope is not None:
            requirements.append({API_KEY_AUTH: [key_scope]})
        _REQUIREMENTS[dependency] = requirements
        return dependency

    return register


def security_of(dependency: Callable[..., Any]) -> list[SecurityRequirement] | None:
    """The security of a dependency marked with `requires_auth`; None for any other."""
    return _REQUIREMENTS.get(dependency)
