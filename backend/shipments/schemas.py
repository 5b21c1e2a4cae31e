"""Request and response bodies for shipments and public tracking."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    Strict,
    StringConstraints,
    model_validator,
)

from backend.fields import (
    AddressLine,
    Email,
    FutureUtcDatetime,
    Name,
    RequestBody,
    ZipCode,
    reject_unstorable,
)
from backend.shipments.models import PUBLIC_TIMELINE_LENGTH
from backend.shipments.status import ShipmentStatus

MAX_TAGS = 10


def _lower_trimmed(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


TagSlug = Annotated[
    str,
    # Lower-cased before the pattern is checked: "Gift" is stored as "gift".
    BeforeValidator(_lower_trimmed),
    StringConstraints(min_length=1, max_length=40, pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$"),
    Field(description="Lower-case slug: letters, digits and single hyphens.", examples=["gift"]),
]
TagList = Annotated[
    list[TagSlug],
    Field(max_length=MAX_TAGS, description=f"At most {MAX_TAGS} tags; duplicates are merged."),
    AfterValidator(lambda tags: list(dict.fromkeys(tags))),
]


Content = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(reject_unstorable),
    Field(description="What is in the parcel.", examples=["2 paperback books"]),
]
City = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(reject_unstorable),
    Field(examples=["Cambridge"]),
]
Reference = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(reject_unstorable),
    Field(description="Your own reference, e.g. an order number.", examples=["ORDER-1042"]),
]
Note = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
    AfterValidator(reject_unstorable),
    Field(description="Shown on the timeline.", examples=["Left the Boston hub"]),
]
Phone = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9][0-9 ()-]{4,28}[0-9]$"),
    Field(examples=["+1 617 555 0100"]),
]
WeightKg = Annotated[
    float,
    # Strict: a number, not `true` or "5".
    Strict(),
    Field(gt=0, le=100, allow_inf_nan=False, description="Kilograms, above 0 and at most 100."),
]
VerificationCode = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]{6}$"),
    Field(description="The 6-digit code the recipient received by email.", examples=["042917"]),
]


class DestinationIn(RequestBody):
    zip_code: ZipCode
    address_line: AddressLine | None = None
    city: City | None = None


class RecipientIn(RequestBody):
    name: Name
    email: Email
    phone: Phone | None = None


class ShipmentCreate(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "content": "2 paperback books",
                    "weight_kg": 0.8,
                    "destination": {
                        "zip_code": "02139",
                        "address_line": "77 Massachusetts Ave",
                        "city": "Cambridge",
                    },
                    "recipient": {"name": "Grace Hopper", "email": "grace@example.com"},
                    "tags": ["books", "gift"],
                    "reference": "ORDER-1042",
                }
            ]
        }
    )

    content: Content
    weight_kg: WeightKg
    destination: DestinationIn
    recipient: RecipientIn
    tags: TagList = []
    reference: Reference | None = None


class ShipmentUpdate(RequestBody):
    """A partner's report. Leave `status` out to add a note, a location or a new ETA only."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "in_transit", "location_zip": "02110", "note": "Left the Boston hub"},
                {"status": "delivered", "verification_code": "042917"},
            ]
        }
    )

    status: ShipmentStatus | None = None
    location_zip: ZipCode | None = None
    note: Note | None = None
    estimated_delivery: FutureUtcDatetime | None = None
    verification_code: VerificationCode | None = None

    @model_validator(mode="after")
    def require_a_change(self) -> Self:
        if not self.model_fields_set - {"verification_code"}:
            raise ValueError("send at least one of status, location_zip, note, estimated_delivery")
        nulled = sorted(field for field in self.model_fields_set if getattr(self, field) is None)
        if nulled:
            raise ValueError(f"cannot be null: {', '.join(nulled)}")
        return self


class TagsReplace(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"tags": ["books", "priority"]}]})

    tags: TagList


class ReviewCreate(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"token": "eyJhbGciOiJIUzI1NiIs...", "rating": 5, "comment": "Fast!"}]
        }
    )

    token: Annotated[
        str, Field(min_length=1, max_length=2000, description="From the delivery email's link.")
    ]
    rating: Annotated[int, Strict(), Field(ge=1, le=5, description="1 (poor) to 5 (excellent).")]
    comment: (
        Annotated[
            str,
            StringConstraints(strip_whitespace=True, min_length=1, max_length=1000),
            AfterValidator(reject_unstorable),
        ]
        | None
    ) = None


class ReviewRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [{"rating": 5, "comment": "Fast!", "created_at": "2026-11-25T18:00:00Z"}]
        },
    )

    rating: int
    comment: str | None
    created_at: datetime


class DestinationRead(BaseModel):
    zip_code: str
    address_line: str | None
    city: str | None


class RecipientRead(BaseModel):
    # Null only in a partner's view of a shipment that ended long ago (`recipient_redacted`).
    name: str | None
    email: str | None
    phone: str | None


class PartnerSummary(BaseModel):
    id: uuid.UUID
    name: str


class TimelineEvent(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sequence: int
    status: ShipmentStatus
    location_zip: str | None
    description: str | None
    created_at: datetime
    livemode: bool = Field(description="False for a test shipment's events.")


_EXAMPLE_TIMELINE: list[JsonValue] = [
    {
        "sequence": 1,
        "status": "placed",
        "location_zip": None,
        "description": "Shipment created",
        "created_at": "2026-11-22T09:30:00Z",
        "livemode": True,
    },
    {
        "sequence": 2,
        "status": "in_transit",
        "location_zip": "02110",
        "description": "Left the Boston hub",
        "created_at": "2026-11-22T14:05:00Z",
        "livemode": True,
    },
]


_EXAMPLE_SHIPMENT: dict[str, JsonValue] = {
    "id": "3d0c8a8e-2f7b-4f57-9d6c-0f3c1b2a4e51",
    "tracking_number": "7KQ2M9XHR4TBWC",
    "status": "in_transit",
    "content": "2 paperback books",
    "weight_kg": 0.8,
    "destination": {
        "zip_code": "02139",
        "address_line": "77 Massachusetts Ave",
        "city": "Cambridge",
    },
    "recipient": {
        "name": "Grace Hopper",
        "email": "grace@example.com",
        "phone": None,
    },
    "tags": ["books", "gift"],
    "reference": "ORDER-1042",
    "seller_id": "0b6f1e9e-5d43-4c1e-9a51-3f8e2f7f9a10",
    "partner": {"id": "7c2d7a43-1f0b-4d8e-8a3a-52d1c0b9e6f4", "name": "Speedy"},
    "estimated_delivery": "2026-11-25T09:30:00Z",
    "version": 2,
    "created_at": "2026-11-22T09:30:00Z",
    "updated_at": "2026-11-22T14:05:00Z",
    "tracking_url": "https://track.example/t/7KQ2M9XHR4TBWC",
    "recipient_redacted": False,
    "livemode": True,
    "timeline": _EXAMPLE_TIMELINE,
}


class ShipmentRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_SHIPMENT]})

    id: uuid.UUID
    tracking_number: str
    status: ShipmentStatus
    content: str
    weight_kg: float
    destination: DestinationRead
    recipient: RecipientRead
    tags: list[str]
    reference: str | None
    seller_id: uuid.UUID
    partner: PartnerSummary
    estimated_delivery: datetime
    version: int
    created_at: datetime
    updated_at: datetime
    tracking_url: str
    recipient_redacted: bool = Field(
        default=False,
        description="True in a partner's view once the shipment has been delivered, "
        "cancelled or returned for longer than the retention period (PARTNER_PII_DAYS, 7 days "
        "by default): the recipient's `name`, `email` and `phone` and the destination's "
        "`address_line` are then null. Sellers always see them.",
    )
    review: ReviewRead | None = Field(
        default=None, description="The recipient's rating, once given after delivery."
    )
    livemode: bool = Field(
        description="False for a test shipment: created with a test key, carried by your "
        "simulated partner, its recipient's emails recorded (`GET /test/emails`), not sent."
    )
    timeline: list[TimelineEvent] = Field(description="Oldest first.")


class ShipmentListItem(ShipmentRead):
    """A shipment in a list: as `ShipmentRead`, but the timeline may be left out."""

    timeline: list[TimelineEvent] | None = Field(  # type: ignore[assignment]
        description="Oldest first; null when the list was asked for without it (`include`)."
    )


class ShipmentPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [_EXAMPLE_SHIPMENT],
                    "next_cursor": "MjAyNi0xMS0yMlQwOTozMDowMCswMDowMHwzZDBj",
                }
            ]
        }
    )

    items: list[ShipmentListItem]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class PublicDestination(BaseModel):
    zip_code: str
    city: str | None


class PublicPartner(BaseModel):
    name: str


class TrackingView(BaseModel):
    """What anyone holding the tracking number may see: no names, emails, phones or ids."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tracking_number": "7KQ2M9XHR4TBWC",
                    "status": "in_transit",
                    "estimated_delivery": "2026-11-25T09:30:00Z",
                    "destination": {"zip_code": "02139", "city": "Cambridge"},
                    "partner": {"name": "Speedy Couriers"},
                    "timeline": _EXAMPLE_TIMELINE,
                    "timeline_total": 2,
                    "livemode": True,
                }
            ]
        }
    )

    tracking_number: str
    status: ShipmentStatus
    estimated_delivery: datetime
    destination: PublicDestination
    partner: PublicPartner
    timeline: list[TimelineEvent] = Field(
        description=f"The newest {PUBLIC_TIMELINE_LENGTH} events at most, oldest first."
    )
    timeline_total: int = Field(
        description="How many events the timeline holds in all; more than `timeline` shows "
        f"once it passes {PUBLIC_TIMELINE_LENGTH}."
    )
    livemode: bool = Field(description="False for a test shipment, which no parcel follows.")


class CoverageRead(BaseModel):
    """Whether a shipment to a zip code can be created now, without naming partners."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"zip_code": "02139", "served": True, "available": True}]}
    )

    zip_code: str
    served: bool = Field(description="An approved delivery partner serves this zip code.")
    available: bool = Field(
        description="One of them has room now: a create would be assigned at once. When "
        "`served` but not `available`, creates get 409 `no_partner_available` until one has."
    )
