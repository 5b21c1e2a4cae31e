"""Reads and writes show a shipment the same way.

GET one and GET a page build the shipment from one Core query (backend/shipments/views.py);
writes answer with the shipment they just changed, built from the ORM objects. A client must not
be able to tell the two apart: the same fields, values, order and formats.
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.shipments.factories import (
    Parties,
    bring_to,
    create_shipment,
    get_shipment,
    make_parties,
    patch_shipment,
)
from tests.shipments.test_reviews import deliver, post_review


async def reads_of(client: httpx.AsyncClient, parties: Parties, shipment_id: str) -> list[Any]:
    """The shipment as GET one and GET a page show it, to its seller and to its partner."""
    views = []
    for headers in (parties.seller_headers, parties.partner_headers):
        views.append(await get_shipment(client, headers, shipment_id))
        page = await client.get("/shipments", headers=headers)
        assert page.status_code == 200, page.text
        views.extend(item for item in page.json()["items"] if item["id"] == shipment_id)
    assert len(views) == 4
    return views


async def test_reads_match_the_response_of_each_write(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client)
    created = await create_shipment(client, parties.seller_headers, tags=["Gift", "books"])
    assert await reads_of(client, parties, created["id"]) == [created] * 4

    moved = await patch_shipment(
        client,
        parties.partner_headers,
        created["id"],
        status="in_transit",
        location_zip="10001",
        note="Left the sorting hub",
    )
    assert moved.status_code == 200, moved.text
    assert len(moved.json()["timeline"]) == 2
    assert await reads_of(client, parties, created["id"]) == [moved.json()] * 4

    retagged = await client.put(
        f"/shipments/{created['id']}/tags", json={"tags": []}, headers=parties.seller_headers
    )
    assert retagged.status_code == 200, retagged.text
    assert retagged.json()["tags"] == []
    assert await reads_of(client, parties, created["id"]) == [retagged.json()] * 4


async def test_reads_show_a_cancelled_shipment_as_cancelling_answered(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client)
    created = await create_shipment(client, parties.seller_headers)
    cancelled = await bring_to(client, db_engine, parties, created["id"], "cancelled")
    assert await reads_of(client, parties, created["id"]) == [cancelled] * 4


async def test_reads_add_the_review_to_the_delivered_shipment(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    delivered = await deliver(client, db_engine)
    shipment = delivered.shipment
    assert shipment["review"] is None
    assert await reads_of(client, delivered.parties, shipment["id"]) == [shipment] * 4

    body = {"token": delivered.token, "rating": 4, "comment": "On time"}
    response = await post_review(client, shipment["tracking_number"], body)
    assert response.status_code == 201, response.text

    for view in await reads_of(client, delivered.parties, shipment["id"]):
        assert view["review"] == response.json()
        assert {**view, "review": None} == shipment
