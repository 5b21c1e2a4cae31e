"""Small typed helpers that create accounts and tokens through the public API."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

PASSWORD = "correct horse battery"


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def seller_body(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "Acme Books",
        "email": unique_email("seller"),
        "password": PASSWORD,
        "zip_code": "02139",
        "address": "1 Main St",
        **overrides,
    }


def partner_body(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "Speedy Couriers",
        "email": unique_email("partner"),
        "password": PASSWORD,
        "serviceable_zip_codes": ["02139", "02140"],
        "max_handling_capacity": 5,
        **overrides,
    }


async def sign_up(client: httpx.AsyncClient, kind: str, **overrides: Any) -> dict[str, Any]:
    body = seller_body(**overrides) if kind == "seller" else partner_body(**overrides)
    response = await client.post(f"/{kind}/signup", json=body)
    assert response.status_code == 201, response.text
    account: dict[str, Any] = response.json()
    account["password"] = body["password"]
    return account


async def log_in(client: httpx.AsyncClient, kind: str, email: str, password: str = PASSWORD) -> str:
    response = await client.post(f"/{kind}/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def account_with_token(
    client: httpx.AsyncClient, kind: str, **overrides: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    """A new account of `kind` and the Authorization header for it."""
    account = await sign_up(client, kind, **overrides)
    token = await log_in(client, kind, account["email"], account["password"])
    return account, bearer(token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


SHIPMENT_SCOPES = ["shipments:read", "shipments:write"]


async def create_api_key(
    client: httpx.AsyncClient,
    account_headers: dict[str, str],
    *,
    kind: str = "seller",
    mode: str = "live",
    scopes: list[str] | None = None,
    name: str = "CI",
    **body: Any,
) -> dict[str, Any]:
    """A new API key of the account (asserting 201): the created body, with its `secret`."""
    payload = {"name": name, "scopes": scopes or SHIPMENT_SCOPES, "mode": mode, **body}
    response = await client.post(f"/{kind}/api-keys", json=payload, headers=account_headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def api_key_headers(
    client: httpx.AsyncClient,
    account_headers: dict[str, str],
    *,
    kind: str = "seller",
    mode: str = "live",
    scopes: list[str] | None = None,
) -> dict[str, str]:
    """The Authorization header of a new API key of the account."""
    created = await create_api_key(client, account_headers, kind=kind, mode=mode, scopes=scopes)
    return bearer(created["secret"])


async def verify_email(
    client: httpx.AsyncClient, engine: AsyncEngine, kind: str, email: str
) -> None:
    """Follow the link of the verification email the account's sign-up queued."""
    query = text(
        "SELECT payload ->> 'verify_url' FROM outbox_messages"
        " WHERE payload ->> 'template' = 'verify_email' AND payload ->> 'to' = :to"
    )
    async with engine.connect() as connection:
        urls = [url for (url,) in await connection.execute(query, {"to": email})]
    [url] = [url for url in urls if f"/{kind}/verify?" in url]
    link = urlsplit(url)
    response = await client.get(f"{link.path}?{link.query}")
    assert response.status_code == 200, response.text
