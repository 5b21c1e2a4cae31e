"""Bodies of the API key routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from backend.accounts.api_keys.models import KeyMode, Scope
from backend.fields import FutureUtcDatetime, Name, RequestBody

_EXAMPLE_KEY: dict[str, Any] = {
    "id": "0d5a3c1e-7f5b-4a2e-9c61-3b8e2f4d6a10",
    "name": "Warehouse sync",
    "prefix": "st_test_4Fq9Zk2B",
    "scopes": ["shipments:read", "shipments:write"],
    "mode": "test",
    "created_at": "2026-12-07T09:30:00Z",
    "expires_at": None,
    "last_used_at": None,
}


def _distinct(scopes: list[Scope]) -> list[Scope]:
    return sorted(set(scopes))


class ApiKeyCreate(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Warehouse sync",
                    "scopes": ["shipments:read", "shipments:write"],
                    "mode": "test",
                }
            ]
        }
    )

    name: Annotated[Name, Field(description="What the key is for, to tell your keys apart.")]
    scopes: Annotated[
        list[Scope],
        Field(min_length=1, max_length=len(Scope)),
        AfterValidator(_distinct),
        Field(
            description="What the key may do. Sellers: `shipments:read`, `shipments:write`, "
            "`webhooks`, `events:read`; partners: `shipments:read`, `shipments:write`."
        ),
    ]
    mode: Annotated[
        KeyMode,
        Field(description="`test` keys see and create only test data; `live` keys live data."),
    ]
    expires_at: Annotated[
        FutureUtcDatetime | None,
        Field(description="When the key stops working; never, if left out."),
    ] = None


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_KEY]})

    id: uuid.UUID
    name: str
    prefix: str = Field(description="The secret's first characters, to recognise the key.")
    scopes: list[Scope]
    mode: KeyMode
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(
        description="When the key was last used, to the minute; null if never."
    )


class ApiKeyCreated(ApiKeyRead):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**_EXAMPLE_KEY, "secret": "st_test_4Fq9Zk2B…"}],
        }
    )

    secret: str = Field(
        description="Send as `Authorization: Bearer <secret>`. Shown this once: store it now. "
        "Only its SHA-256 digest is kept."
    )


class ApiKeyList(BaseModel):
    items: list[ApiKeyRead]
