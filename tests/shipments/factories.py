"""Shared, typed helpers for shipment tests: bodies, parties, status walks, delivery codes.

The delivery code is read from the outbox row written for the recipient's email (the
notification seam), never from an API response.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import account_with_token

DESTINATION_ZIP = "02139"


def shipment_body(**overrides: Any) -> dict[str, Any]:
    """A valid create body; top-level keys are replaced by `overrides`."""
    return {
        "content": "2 paperback books",
        "weight_kg": 0.8,
        "destination": {
            "zip_code": DESTINATION_ZIP,
            "address_line": "77 Massachusetts Ave",
            "city": "Cambridge",
        },
        "recipient": {"name": "Grace Hopper", "email": f"grace-{uuid.uuid4().hex[:8]}@example.com"},
        "tags": ["books", "gift"],
        "reference": "ORDER-1042",
        **overrides,
    }


@dataclass(frozen=True, slots=True)
class Parties:
    """A seller and a partner serving DESTINATION_ZIP, with their auth headers."""

    seller: dict[str, Any]
    seller_headers: dict[str, str]
    partner: dict[str, Any]
    partner_headers: dict[str, str]


async def make_parties(client: httpx.AsyncClient, **partner_overrides: Any) -> Parties:
    """A new seller and a new partner (capacity 5, serving DESTINATION_ZIP unless overridden)."""
    seller, seller_headers = await account_with_token(client, "seller")
    partner_values: dict[str, Any] = {
        "serviceable_zip_codes": [DESTINATION_ZIP],
        "max_handling_capacity": 5,
        **partner_overrides,
    }
    partner, partner_headers = await account_with_token(client, "partner", **partner_values)
    return Parties(seller, seller_headers, partner, partner_headers)


async def create_shipment(
    client: httpx.AsyncClient, seller_headers: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    """Create a shipment (asserting 201) and return its body."""
    response = await client.post(
        "/shipments", json=shipment_body(**overrides), headers=seller_headers
    )
    assert response.status_code == 201, response.text
    shipment: dict[str, Any] = response.json()
    return shipment


async def get_shipment(
    client: httpx.AsyncClient, headers: dict[str, str], shipment_id: str
) -> dict[str, Any]:
    response = await client.get(f"/shipments/{shipment_id}", headers=headers)
    assert response.status_code == 200, response.text
    shipment: dict[str, Any] = response.json()
    return shipment


async def patch_shipment(
    client: httpx.AsyncClient,
    partner_headers: dict[str, str],
    shipment_id: str,
    **body: Any,
) -> httpx.Response:
    """PATCH /shipments/{id} with `body` as JSON; returns the response unchecked."""
    return await client.patch(f"/shipments/{shipment_id}", json=body, headers=partner_headers)


async def active_shipments(client: httpx.AsyncClient, partner_headers: dict[str, str]) -> int:
    """The partner's `active_shipments` from GET /partner/me."""
    response = await client.get("/partner/me", headers=partner_headers)
    assert response.status_code == 200, response.text
    count: int = response.json()["active_shipments"]
    return count


async def delivery_code_messages(
    db_engine: AsyncEngine, shipment_id: str | uuid.UUID
) -> list[dict[str, Any]]:
    """Payloads of the outbox rows carrying a delivery code for the shipment, oldest first."""
    query = text(
        "SELECT payload FROM outbox_messages"
        " WHERE shipment_id = :id AND payload ->> 'verification_code' IS NOT NULL"
        " ORDER BY created_at, id"
    )
    async with db_engine.connect() as connection:
        rows = (await connection.execute(query, {"id": uuid.UUID(str(shipment_id))})).all()
    return [dict(row.payload) for row in rows]


async def delivery_code(db_engine: AsyncEngine, shipment_id: str | uuid.UUID) -> str:
    """The newest delivery code sent to the shipment's recipient (asserts there is one)."""
    messages = await delivery_code_messages(db_engine, shipment_id)
    assert messages, f"no delivery code in the outbox for shipment {shipment_id}"
    code: str = messages[-1]["verification_code"]
    return code


# The partner's path to each status (cancelled is the seller's, through /cancel).
PATH_TO: dict[str, list[str]] = {
    "placed": [],
    "in_transit": ["in_transit"],
    "out_for_delivery": ["in_transit", "out_for_delivery"],
    "delivered": ["in_transit", "out_for_delivery", "delivered"],
    "returned": ["in_transit", "returned"],
    "cancelled": [],
}


async def bring_to(
    client: httpx.AsyncClient,
    db_engine: AsyncEngine,
    parties: Parties,
    shipment_id: str,
    status: str,
) -> dict[str, Any]:
    """Move a `placed` shipment to `status` through the API; returns the final shipment body."""
    shipment = await get_shipment(client, parties.seller_headers, shipment_id)
    if status == "cancelled":
        response = await client.post(
            f"/shipments/{shipment_id}/cancel", headers=parties.seller_headers
        )
        assert response.status_code == 200, response.text
        cancelled: dict[str, Any] = response.json()
        return cancelled
    for step in PATH_TO[status]:
        body: dict[str, Any] = {"status": step}
        if step == "delivered":
            body["verification_code"] = await delivery_code(db_engine, shipment_id)
        response = await patch_shipment(client, parties.partner_headers, shipment_id, **body)
        assert response.status_code == 200, response.text
        shipment = response.json()
    assert shipment["status"] == status
    return shipment


def as_public(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A seller's timeline as public views show it: without the partner's notes on failed
    attempts and without coordinates (a scan at the door would show the address)."""
    public = []
    for event in timeline:
        shown = {field: value for field, value in event.items() if field != "note"}
        if shown["location"] is not None:
            shown["location"] = {**shown["location"], "lat": None, "lon": None}
        public.append(shown)
    return public


async def try_again_after_a_failed_attempt(
    client: httpx.AsyncClient, partner_headers: dict[str, str], shipment_id: str
) -> dict[str, Any]:
    """An out-for-delivery shipment's failed attempt (nobody home), then out for delivery
    again; returns the shipment."""
    failed = await patch_shipment(
        client,
        partner_headers,
        shipment_id,
        status="in_transit",
        failure_reason="recipient_unavailable",
    )
    assert failed.status_code == 200, failed.text
    again = await patch_shipment(client, partner_headers, shipment_id, status="out_for_delivery")
    assert again.status_code == 200, again.text
    shipment: dict[str, Any] = again.json()
    return shipment
