"""Bodies of the webhook and event feed routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from backend.fields import RequestBody, reject_unstorable

_EXAMPLE_ENDPOINT: dict[str, Any] = {
    "id": "5b7e8a52-0c1e-4d8f-9f0a-2d6c3b1a9e77",
    "url": "https://shop.example/hooks/shiptrack",
    "description": "Order system",
    "enabled": True,
    "disabled_reason": None,
    "failing_since": None,
    "created_at": "2026-11-22T09:30:00Z",
}


class WebhookEndpointCreate(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"url": "https://shop.example/hooks/shiptrack", "description": "Orders"}]
        }
    )

    url: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=8, max_length=2000),
        AfterValidator(reject_unstorable),
        Field(description="An http(s) URL on the public internet."),
    ]
    description: Annotated[
        str | None,
        StringConstraints(strip_whitespace=True, max_length=200),
        AfterValidator(lambda value: value if value is None else reject_unstorable(value)),
    ] = None


class WebhookEndpointRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_EXAMPLE_ENDPOINT]}
    )

    id: uuid.UUID
    url: str
    description: str | None
    enabled: bool
    disabled_reason: str | None = Field(description="Why deliveries stopped, when they did.")
    failing_since: datetime | None
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpointRead):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**_EXAMPLE_ENDPOINT, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]
        }
    )

    secret: str = Field(
        description="Verifies the `webhook-signature` header. Shown this once: store it now."
    )


class WebhookEndpointList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_EXAMPLE_ENDPOINT]}]})

    items: list[WebhookEndpointRead]


_EXAMPLE_DELIVERY: dict[str, Any] = {
    "id": "c1b3f0e2-77a4-4c53-8d4e-0f5e9a6b2c11",
    "event_id": "9d2f6c1a-3b4e-4f5a-8b7c-1d2e3f4a5b6c",
    "event_type": "shipment.updated",
    "attempt": 1,
    "succeeded": False,
    "status_code": 503,
    "error": None,
    "duration_ms": 41,
    "created_at": "2026-11-22T09:31:02Z",
}
_EXAMPLE_EVENT: dict[str, Any] = {
    "id": "9d2f6c1a-3b4e-4f5a-8b7c-1d2e3f4a5b6c",
    "type": "shipment.updated",
    "shipment_id": "3d0c8a8e-2f7b-4f57-9d6c-0f3c1b2a4e51",
    "data": {"shipment": {"status": "in_transit"}, "timeline_event": {"sequence": 2}},
    "created_at": "2026-11-22T14:05:00Z",
}


class WebhookDeliveryRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_EXAMPLE_DELIVERY]}
    )

    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    attempt: int
    succeeded: bool
    status_code: int | None
    error: str | None
    duration_ms: int
    created_at: datetime


class WebhookDeliveryPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_EXAMPLE_DELIVERY], "next_cursor": None}]}
    )

    items: list[WebhookDeliveryRead]
    next_cursor: str | None


class EventRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_EXAMPLE_EVENT]}
    )

    id: uuid.UUID = Field(description="Also the `webhook-id` of every delivery of this event.")
    type: str
    shipment_id: uuid.UUID | None
    data: dict[str, Any]
    created_at: datetime


class EventPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_EXAMPLE_EVENT], "has_more": False}]}
    )

    items: list[EventRead] = Field(description="Oldest first.")
    has_more: bool = Field(description="Ask again with `after` = the last id to get the rest.")


class WebhookTestQueued(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"event_id": "9d2f6c1a-3b4e-4f5a-8b7c-1d2e3f4a5b6c"}]}
    )

    event_id: uuid.UUID


class ShipmentEventData(BaseModel):
    shipment: dict[str, Any] = Field(
        description="The shipment as `GET /shipments/{id}` shows it, without the timeline."
    )
    timeline_event: dict[str, Any] = Field(description="The timeline event behind this event.")


class WebhookPayload(BaseModel):
    """The JSON body of every delivery. Verify `webhook-signature` before trusting it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "shipment.updated",
                    "timestamp": "2026-11-22T14:05:00Z",
                    "data": {
                        "shipment": {
                            "id": "3d0c8a8e-2f7b-4f57-9d6c-0f3c1b2a4e51",
                            "status": "in_transit",
                        },
                        "timeline_event": {
                            "sequence": 2,
                            "status": "in_transit",
                            "location_zip": "02110",
                        },
                    },
                }
            ]
        }
    )

    type: str
    timestamp: datetime
    data: ShipmentEventData
