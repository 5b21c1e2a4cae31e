"""Bodies of the webhook and event feed routes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from typing_extensions import TypedDict

from backend.fields import RequestBody, reject_unstorable

_EXAMPLE_ENDPOINT: dict[str, Any] = {
    "id": "5b7e8a52-0c1e-4d8f-9f0a-2d6c3b1a9e77",
    "url": "https://shop.example/hooks/shiptrack",
    "description": "Order system",
    "enabled": True,
    "disabled_reason": None,
    "failing_since": None,
    "previous_secret_expires_at": None,
    "created_at": "2026-11-22T09:30:00Z",
    "livemode": True,
}
# Rotating a secret keeps the old one signing beside it for this long unless told otherwise,
# and for at most the maximum.
DEFAULT_OVERLAP_SECONDS = 24 * 3600
MAX_OVERLAP_SECONDS = 7 * 24 * 3600


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
    previous_secret_expires_at: datetime | None = Field(
        description="After a secret rotation, until when deliveries are also signed with the "
        "previous secret; null when only the current secret signs."
    )
    created_at: datetime
    livemode: bool = Field(description="False for test data (created with a test key).")

    @field_validator("previous_secret_expires_at")
    @classmethod
    def _only_while_in_use(cls, value: datetime | None) -> datetime | None:
        # The stored time stays once it has passed; the previous secret no longer signs then.
        return value if value is not None and value > datetime.now(UTC) else None


class WebhookEndpointCreated(WebhookEndpointRead):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {**_EXAMPLE_ENDPOINT, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
                {
                    **_EXAMPLE_ENDPOINT,
                    "previous_secret_expires_at": "2026-11-23T09:30:00Z",
                    "secret": "whsec_3q0hXb7wYt1cUe2ZkR9mN4sJvA8pL6dF",
                },
            ]
        }
    )

    secret: str = Field(
        description="Verifies the `webhook-signature` header. Shown this once: store it now."
    )


class WebhookSecretRotation(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"overlap_seconds": 86400}, {}]})

    overlap_seconds: int = Field(
        default=DEFAULT_OVERLAP_SECONDS,
        ge=0,
        le=MAX_OVERLAP_SECONDS,
        description="How long deliveries stay signed with the old secret too, so you can "
        "deploy the new one meanwhile (default a day, at most 7 days; 0 retires it at once).",
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
    "livemode": True,
}
_EXAMPLE_EVENT_DATA: dict[str, Any] = {
    "shipment_id": "3d0c8a8e-2f7b-4f57-9d6c-0f3c1b2a4e51",
    "tracking_number": "7KQ2M9XHT4B8RW",
    "reference": "order-1042",
    "status": "in_transit",
    "version": 2,
    "changes": {"status": "in_transit"},
    "timeline_event": {
        "sequence": 2,
        "status": "in_transit",
        "occurred_at": "2026-11-22T14:02:00Z",
        "location_zip": "02110",
        "location": {"zip_code": "02110", "city": "Boston", "lat": 42.35, "lon": -71.05},
        "failure_reason": None,
        "description": "In transit",
        "note": None,
        "created_at": "2026-11-22T14:05:00Z",
        "livemode": True,
    },
}
_EXAMPLE_CREATED_DATA: dict[str, Any] = {
    **_EXAMPLE_EVENT_DATA,
    "status": "placed",
    "version": 1,
    "changes": {
        "status": "placed",
        "estimated_delivery": "2026-11-25T09:30:00Z",
        "partner": {"id": "0f6b1c2d-8e4a-4b7c-9d1e-2a3b4c5d6e7f", "name": "Harbor Couriers"},
    },
    "timeline_event": {
        "sequence": 1,
        "status": "placed",
        "occurred_at": "2026-11-22T09:30:00Z",
        "location_zip": None,
        "location": None,
        "failure_reason": None,
        "description": "Shipment created",
        "note": None,
        "created_at": "2026-11-22T09:30:00Z",
        "livemode": True,
    },
}
_EXAMPLE_EVENT: dict[str, Any] = {
    "id": "9d2f6c1a-3b4e-4f5a-8b7c-1d2e3f4a5b6c",
    "type": "shipment.updated",
    "shipment_id": "3d0c8a8e-2f7b-4f57-9d6c-0f3c1b2a4e51",
    "data": _EXAMPLE_EVENT_DATA,
    "created_at": "2026-11-22T14:05:00Z",
    "livemode": True,
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
    livemode: bool = Field(description="False for test data (created with a test key).")


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
    data: dict[str, Any] = Field(
        description="For `shipment.*` events, what changed (`ShipmentEventData`, as in the "
        "webhook deliveries); for `webhook.test`, a message. `GET /shipments/{id}` gives the "
        "whole shipment."
    )
    created_at: datetime
    livemode: bool = Field(description="False for test data (created with a test key).")


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


class EventPartner(TypedDict):
    id: uuid.UUID
    name: str


class EventRecipient(TypedDict):
    name: str | None
    email: str | None
    phone: str | None


class EventDestination(TypedDict):
    zip_code: str
    address_line: str | None
    city: str | None


class ShipmentChanges(TypedDict, total=False):
    """Only the fields this event set, with their new values; a field it left alone is absent
    (never null). `shipment.created` carries the initial `status`, `estimated_delivery` and
    `partner`; a report carries `status` when the status changed and `estimated_delivery` when
    a new estimate came with it; a failed delivery attempt carries its `failure_reason` and
    the `attempts` so far; a cancellation carries `status`; a correction of the delivery
    details carries the corrected `recipient` and/or `destination` as they are now, and the
    new `partner` when the new zip code moved the shipment to another. A scan or a note alone
    changes nothing here: it is in `timeline_event`."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    status: str
    estimated_delivery: datetime
    partner: EventPartner
    failure_reason: str
    attempts: int
    recipient: EventRecipient
    destination: EventDestination


class EventLocationEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    zip_code: str | None
    city: str | None
    lat: float | None
    lon: float | None


class EventTimelineEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sequence: int = Field(description="Recording order in the shipment's timeline: 1, 2, 3…")
    status: str
    # The fields below `status` are absent from events recorded before they existed.
    occurred_at: datetime | None = Field(default=None, description="When it happened.")
    location_zip: str | None
    location: EventLocationEntry | None = None
    failure_reason: str | None = Field(
        default=None, description="Why a delivery attempt failed (§12.1's list)."
    )
    description: str | None
    note: str | None = Field(default=None, description="The partner's note on a failed attempt.")
    created_at: datetime = Field(description="When it was recorded.")
    # Absent from events recorded before test mode, which were all live.
    livemode: bool = Field(default=True, description="False for a test shipment's events.")


class ShipmentEventData(BaseModel):
    """What a `shipment.*` event says: which shipment, where it stands now, and what this
    event changed. Not the whole shipment: fetch `GET /shipments/{id}` for that (recipient,
    destination, tags, the full timeline). Events recorded by versions before this shape
    carry a `shipment` snapshot instead, until they leave the feed (`EVENT_RETENTION_DAYS`)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [_EXAMPLE_CREATED_DATA, _EXAMPLE_EVENT_DATA]}
    )

    shipment_id: uuid.UUID
    tracking_number: str
    reference: str | None = Field(description="Your own reference, as given at creation.")
    status: str = Field(description="The shipment's status after this event.")
    version: int = Field(
        description="The shipment's version after this event (the `ETag` of its GET): "
        "higher is newer, so an event older than what you hold can be ignored."
    )
    changes: ShipmentChanges
    timeline_event: EventTimelineEntry = Field(description="The timeline event behind this event.")


class WebhookPayload(BaseModel):
    """The JSON body of every delivery. Verify `webhook-signature` before trusting it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "shipment.updated",
                    "timestamp": "2026-11-22T14:05:00Z",
                    "livemode": True,
                    "data": _EXAMPLE_EVENT_DATA,
                }
            ]
        }
    )

    type: str
    timestamp: datetime
    livemode: bool = Field(
        description="False for events of test data, sent only to endpoints registered with a "
        "test key."
    )
    data: ShipmentEventData
