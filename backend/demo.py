"""`shiptrack demo`: a seller, partners and a shipment in every status, through the real API.

The partners are approved as the operator would approve them, so the demo works whether new
partners start pending (PARTNER_APPROVAL=manual, the default) or not.

Requests go through the application in-process (the same code and database as the running
service), so everything it creates is visible at once on http://127.0.0.1:8000.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select
from sqlmodel import col

from backend.accounts.partner_approval import PartnerAdministration
from backend.context import app_context
from backend.db import unit_of_work
from backend.outbox.models import OutboxMessage

DEMO_PASSWORD = "demo-password-123"  # noqa: S105 - printed for the newcomer on purpose


@dataclass
class DemoAccount:
    kind: str
    id: str
    name: str
    email: str
    token: str


@dataclass
class DemoShipment:
    status: str
    id: str
    tracking_number: str
    tracking_url: str
    # The name of the partner that carries it, as its seller and recipient see it.
    partner: str


@dataclass
class DemoData:
    seller: DemoAccount
    partners: list[DemoAccount]
    # A zip code of this run's own, so partners from earlier runs never take its shipments.
    zip_code: str
    shipments: list[DemoShipment] = field(default_factory=list)


class DemoClient:
    def __init__(self, http: httpx.AsyncClient, app: FastAPI) -> None:
        self._http = http
        self._app = app

    async def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self._http.request(method, path, headers=headers, **kwargs)
        if response.is_error:
            raise RuntimeError(f"{method} {path} failed: {response.status_code} {response.text}")
        return response.json() if response.content else None

    async def account(self, kind: str, name: str, **profile: Any) -> DemoAccount:
        email = f"demo-{kind}-{secrets.token_hex(3)}@example.com"
        body = {"name": name, "email": email, "password": DEMO_PASSWORD, **profile}
        account = await self.call("POST", f"/{kind}/signup", json=body)
        form = {"username": email, "password": DEMO_PASSWORD}
        token = (await self.call("POST", f"/{kind}/token", data=form))["access_token"]
        return DemoAccount(kind, account["id"], name, email, token)

    async def latest_delivery_code(self, shipment_id: str) -> str | None:
        """The code, read where the email waits in the outbox; None once the email is gone
        (a running worker erases it from the stored row after sending)."""
        async with app_context(self._app).sessionmaker() as session:
            statement = (
                select(col(OutboxMessage.payload))
                .where(col(OutboxMessage.shipment_id) == uuid.UUID(shipment_id))
                .where(col(OutboxMessage.payload)["template"].astext == "delivery_code")
                .order_by(col(OutboxMessage.created_at).desc())
                .limit(1)
            )
            payload = (await session.execute(statement)).scalar_one()
        code = payload.get("verification_code")
        return str(code) if code else None

    async def deliver(self, shipment_id: str, partner_token: str) -> Any:
        """Deliver an out-for-delivery shipment with the recipient's code, as a courier would."""
        path = f"/shipments/{shipment_id}"
        for _ in range(5):
            code = await self.latest_delivery_code(shipment_id)
            if code is not None:
                body = {"status": "delivered", "verification_code": code}
                return await self.call("PATCH", path, partner_token, json=body)
            # The worker sent it first: a failed attempt and a new run issue a fresh code.
            await self.call("PATCH", path, partner_token, json={"status": "in_transit"})
            await self.call("PATCH", path, partner_token, json={"status": "out_for_delivery"})
        raise RuntimeError("could not read a delivery code before the worker sent it")


# Each shipment's path through the status machine, as its partner reports it.
STORIES: list[tuple[str, list[dict[str, Any]]]] = [
    ("2 paperback books", []),
    (
        "Espresso machine",
        [{"status": "in_transit", "location_zip": "07001", "note": "Left the Newark hub"}],
    ),
    (
        "Running shoes",
        [
            {"status": "in_transit", "location_zip": "07001"},
            {
                "status": "in_transit",
                "location_zip": "10010",
                "note": "Arrived at the Manhattan depot",
            },
            {"status": "out_for_delivery"},
        ],
    ),
    (
        "Wool scarf",
        [{"status": "in_transit"}, {"status": "out_for_delivery"}, {"status": "delivered"}],
    ),
    (
        "Desk lamp",
        [{"status": "in_transit"}, {"status": "returned", "note": "Refused by recipient"}],
    ),
]


async def seed(app: FastAPI) -> DemoData:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:
        demo = DemoClient(http, app)
        zip_code = f"DEMO-{secrets.token_hex(2).upper()}"
        seller = await demo.account("seller", "Acme Books", zip_code="10001")
        partners = [
            await demo.account(
                "partner", name, serviceable_zip_codes=[zip_code], max_handling_capacity=25
            )
            for name in ("Speedy Couriers", "Metro Parcel")
        ]
        await approve_partners(app, partners)
        data = DemoData(seller=seller, partners=partners, zip_code=zip_code)
        for content, steps in STORIES:
            data.shipments.append(await _ship(demo, data, content, steps))
        cancelled = await _ship(demo, data, "Gift card", [])
        await demo.call("POST", f"/shipments/{cancelled.id}/cancel", seller.token)
        cancelled.status = "cancelled"
        data.shipments.append(cancelled)
        return data


async def approve_partners(app: FastAPI, partners: list[DemoAccount]) -> None:
    """As the operator would (`shiptrack partners approve`), whatever PARTNER_APPROVAL says:
    the demo's shipments need partners that can take them."""
    context = app_context(app)
    async with unit_of_work(context.sessionmaker) as unit:
        administration = PartnerAdministration(unit, context.settings.public_base_url)
        for partner in partners:
            await administration.approve(partner.email)


async def _ship(
    demo: DemoClient, data: DemoData, content: str, steps: list[dict[str, Any]]
) -> DemoShipment:
    body = {
        "content": content,
        "weight_kg": 1.2,
        "destination": {
            "zip_code": data.zip_code,
            "city": "New York",
            "address_line": "350 5th Ave",
        },
        "recipient": {"name": "Grace Hopper", "email": "grace@example.com"},
        "tags": ["demo"],
    }
    shipment = await demo.call("POST", "/shipments", data.seller.token, json=body)
    partner_token = next(p.token for p in data.partners if p.id == shipment["partner"]["id"])
    carrier = shipment["partner"]["name"]  # as the seller sees it
    for step in steps:
        if step.get("status") == "delivered":
            shipment = await demo.deliver(shipment["id"], partner_token)
            continue
        shipment = await demo.call(
            "PATCH", f"/shipments/{shipment['id']}", partner_token, json=step
        )
    return DemoShipment(
        shipment["status"],
        shipment["id"],
        shipment["tracking_number"],
        shipment["tracking_url"],
        carrier,
    )


def describe(data: DemoData, base_url: str) -> str:
    lines = [
        f"Shiptrack demo data on {base_url}  (reference: {base_url}/scalar)",
        "",
        f"Password for every demo account: {DEMO_PASSWORD}",
    ]
    for account in [data.seller, *data.partners]:
        lines += [
            "",
            f"{account.kind.title()}: {account.name} <{account.email}>",
            f"  token: {account.token}",
        ]
    lines += ["", "Shipments:"]
    for shipment in data.shipments:
        # The partner's name last: it has spaces, and scripts read the first three columns.
        lines.append(
            f"  {shipment.status:<17} {shipment.id}  {shipment.tracking_url}  by {shipment.partner}"
        )
    lines += [
        "",
        "Try:",
        f"  curl -s {base_url}/shipments -H 'Authorization: Bearer {data.seller.token}'",
        f"  open {data.shipments[2].tracking_url}",
    ]
    return "\n".join(lines)
