"""Bodies of the test mode routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.fields import RequestBody
from backend.shipments.simulation import Scenario, reaches, scenario_for
from backend.shipments.status import ShipmentStatus


class AdvanceRequest(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"to": "delivered", "scenario": "delivered_second_attempt"}]
        }
    )

    to: ShipmentStatus = Field(description="The status to bring the shipment to.")
    scenario: Scenario | None = Field(
        default=None,
        description="The path to take: `delivered` (first attempt), `delivered_second_attempt` "
        "(a failed attempt first), `returned` (refused at the door), `cancelled` (while "
        "placed). Left out, the one `to` implies.",
    )

    @model_validator(mode="after")
    def scenario_leads_to_status(self) -> Self:
        if self.to is ShipmentStatus.placed:
            raise ValueError("`to` must be a status after placed")
        if not reaches(scenario_for(self.to, self.scenario), self.to):
            raise ValueError(f"the {self.scenario} scenario never reaches {self.to.value}")
        return self


_EXAMPLE_EMAIL: dict[str, Any] = {
    "id": "6a0f2b8e-4c1d-4e7a-9b3f-2d5c8e1a7f90",
    "shipment_id": "3d0c8a8e-2f7b-4f57-9d6c-0f3c1b2a4e51",
    "to": "grace@example.com",
    "subject": "Your parcel 7KQ2M9XHR4TBWC is out for delivery",
    "text": "Hello Grace Hopper,\n\nYour delivery code is 042917.\n",
    "html": "<p>Hello Grace Hopper,</p><p>Your delivery code is <b>042917</b>.</p>",
    "created_at": "2026-12-07T09:30:00Z",
}


class RecordedEmailRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_EMAIL]})

    id: uuid.UUID
    shipment_id: uuid.UUID
    to: str
    subject: str
    text: str = Field(description="The plain-text part, as the recipient would have read it.")
    html: str = Field(description="The HTML part.")
    created_at: datetime


class RecordedEmailPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_EXAMPLE_EMAIL], "next_cursor": None}]}
    )

    items: list[RecordedEmailRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class ClearedTestData(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"shipments": 12, "events": 57, "webhook_endpoints": 1, "emails": 30}]
        }
    )

    shipments: int
    events: int = Field(description="Feed events, with their webhook deliveries.")
    webhook_endpoints: int
    emails: int
