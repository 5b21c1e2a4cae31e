"""`shiptrack demo` leaves a newcomer ready-to-use accounts and a shipment in every status."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from backend.config import Settings
from backend.demo import describe, seed
from backend.main import create_app
from backend.shipments.status import ShipmentStatus
from tests.conftest import running_client
from tests.factories import bearer


async def test_demo_creates_a_shipment_in_every_status(settings: Settings) -> None:
    # With manual approval, the production default: the demo approves its own partners.
    app = create_app(settings.model_copy(update={"partner_approval": "manual"}))
    async with running_client(app) as client:
        data = await seed(app)

        assert {shipment.status for shipment in data.shipments} == set(ShipmentStatus)
        listed = await client.get("/shipments?limit=100", headers=bearer(data.seller.token))
        assert listed.status_code == 200
        assert {item["status"] for item in listed.json()["items"]} == set(ShipmentStatus)
        for partner in data.partners:
            me = await client.get("/partner/me", headers=bearer(partner.token))
            assert me.status_code == 200
            assert me.json()["status"] == "approved"
        for shipment in data.shipments:
            page = await client.get(shipment.tracking_url.removeprefix("http://127.0.0.1:8000"))
            assert page.status_code == 200


async def test_demo_summary_prints_tokens_and_tracking_links(app: FastAPI) -> None:
    data = await seed(app)

    summary = describe(data, "http://127.0.0.1:8000")

    assert data.seller.token in summary
    assert all(partner.token in summary for partner in data.partners)
    assert all(shipment.tracking_url in summary for shipment in data.shipments)
    assert "http://127.0.0.1:8000/scalar" in summary


async def test_demo_summary_names_the_partner_that_carries_each_shipment(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    data = await seed(app)

    lines = describe(data, "http://127.0.0.1:8000").splitlines()

    carriers = set()
    for shipment in data.shipments:
        # The partner as the API shows it to the seller, not as the demo remembers it.
        read = await client.get(f"/shipments/{shipment.id}", headers=bearer(data.seller.token))
        assert read.status_code == 200
        carrier = read.json()["partner"]["name"]
        carriers.add(carrier)
        (line,) = [line for line in lines if shipment.id in line]
        assert line.endswith(f"  by {carrier}")
        # The README reads the status, id and link as the first three columns.
        assert line.split()[:3] == [shipment.status, shipment.id, shipment.tracking_url]
    # Both demo partners carry something, so the names tell the shipments apart.
    assert carriers == {partner.name for partner in data.partners}
