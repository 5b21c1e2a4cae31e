"""Request and response bodies for shipments and public tracking."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
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
from backend.shipments.failures import FailureReason
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
Latitude = Annotated[float, Strict(), Field(ge=-90, le=90, allow_inf_nan=False, examples=[42.3601])]
Longitude = Annotated[
    float, Strict(), Field(ge=-180, le=180, allow_inf_nan=False, examples=[-71.0589])
]


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be a date between the years 1 and 9999 in UTC") from None


OccurredAt = Annotated[
    AwareDatetime,
    AfterValidator(_in_utc),
    Field(
        description="When it happened (RFC 3339 with an offset); now when left out. At most "
        "MAX_SCAN_AGE_HOURS (72) old, not before the shipment was created, and not in the "
        "future beyond SCAN_CLOCK_SKEW_SECONDS (300): otherwise 422 `invalid_occurred_at`.",
        examples=["2026-11-22T14:05:00Z"],
    ),
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


class LocationIn(RequestBody):
    """Where it happened: a zip code, a city, coordinates (both or neither), or several."""

    zip_code: ZipCode | None = None
    city: City | None = None
    lat: Latitude | None = None
    lon: Longitude | None = None

    @model_validator(mode="after")
    def require_a_place(self) -> Self:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("send lat and lon together")
        if self.zip_code is None and self.city is None and self.lat is None:
            raise ValueError("send at least one of zip_code, city, lat and lon")
        return self


class ShipmentUpdate(RequestBody):
    """A partner's report. Leave `status` out to add a note, a location or a new ETA only.

    A failed delivery attempt moves an `out_for_delivery` shipment back to `in_transit` with a
    `failure_reason` (`other` needs a `note`); `refused` and `address_not_found` may instead
    send it straight to `returned`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "in_transit",
                    "location": {"zip_code": "02110", "city": "Boston"},
                    "occurred_at": "2026-11-22T14:05:00Z",
                    "note": "Left the Boston hub",
                },
                {"status": "in_transit", "failure_reason": "recipient_unavailable"},
                {"status": "delivered", "verification_code": "042917"},
            ]
        }
    )

    status: ShipmentStatus | None = None
    location_zip: ZipCode | None = Field(
        default=None, description="Shorthand for `location.zip_code` (the same when both are sent)."
    )
    location: LocationIn | None = None
    occurred_at: OccurredAt | None = None
    note: Note | None = None
    failure_reason: FailureReason | None = Field(
        default=None,
        description="Why a delivery attempt failed, with status in_transit (or returned for "
        "`refused` and `address_not_found`). Public views show it in plain words, never the "
        "note.",
    )
    estimated_delivery: FutureUtcDatetime | None = None
    verification_code: VerificationCode | None = None

    @model_validator(mode="after")
    def require_a_change(self) -> Self:
        changes = {"status", "location_zip", "location", "note", "estimated_delivery"}
        if not self.model_fields_set & changes:
            raise ValueError(
                "send at least one of status, location, location_zip, note, estimated_delivery"
            )
        nulled = sorted(field for field in self.model_fields_set if getattr(self, field) is None)
        if nulled:
            raise ValueError(f"cannot be null: {', '.join(nulled)}")
        location_zip = self.location.zip_code if self.location is not None else None
        if None not in (self.location_zip, location_zip) and self.location_zip != location_zip:
            raise ValueError("location_zip and location.zip_code differ: send one of them")
        return self

    @model_validator(mode="after")
    def check_failure_reason(self) -> Self:
        if self.failure_reason is None:
            return self
        if self.status not in (ShipmentStatus.in_transit, ShipmentStatus.returned):
            raise ValueError("failure_reason goes with status in_transit or returned")
        if self.failure_reason is FailureReason.other and self.note is None:
            raise ValueError("failure_reason other needs a note saying what happened")
        return self

    @property
    def place(self) -> LocationIn | None:
        """Where it happened, with the zip code whichever way it was sent."""
        if self.location is None:
            if self.location_zip is None:
                return None
            return LocationIn.model_construct(
                zip_code=self.location_zip, city=None, lat=None, lon=None
            )
        if self.location.zip_code is None and self.location_zip is not None:
            return self.location.model_copy(update={"zip_code": self.location_zip})
        return self.location


ScanId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]+$"),
    Field(
        description="Your device's id for this scan (a UUID works): a retried scan with the "
        "same id for the same shipment is recorded once.",
        examples=["a3f1c2d4-scan-0001"],
    ),
]


class ScanIn(ShipmentUpdate):
    """One scan: a report (as for PATCH /shipments/{id}) on the shipment with this tracking
    number, named by the device's own `scan_id`."""

    scan_id: ScanId
    tracking_number: Annotated[
        str,
        StringConstraints(min_length=6, max_length=20, pattern=r"^[A-Za-z0-9]+$"),
        Field(description="As printed on the label.", examples=["7KQ2M9XHR4TBWC"]),
    ]


MAX_SCANS_PER_BATCH = 100


class ScanBatch(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "scans": [
                        {
                            "scan_id": "van12-000481",
                            "tracking_number": "7KQ2M9XHR4TBWC",
                            "status": "in_transit",
                            "occurred_at": "2026-11-22T14:05:00Z",
                            "location": {"zip_code": "02110", "lat": 42.35, "lon": -71.05},
                        }
                    ]
                }
            ]
        }
    )

    scans: Annotated[list[ScanIn], Field(min_length=1, max_length=MAX_SCANS_PER_BATCH)]


ScanOutcome = Literal["accepted", "duplicate", "rejected"]


class ScanResult(BaseModel):
    scan_id: str
    tracking_number: str
    result: ScanOutcome = Field(
        description="`accepted`: recorded now; `duplicate`: this `scan_id` was recorded "
        "before (nothing new); `rejected`: nothing recorded, `problem` says why."
    )
    sequence: int | None = Field(
        description="The timeline event this scan recorded (accepted or duplicate)."
    )
    problem: dict[str, Any] | None = Field(
        description="The problem document (as a request alone would get), when rejected."
    )


class ScanResults(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {
                            "scan_id": "van12-000481",
                            "tracking_number": "7KQ2M9XHR4TBWC",
                            "result": "accepted",
                            "sequence": 3,
                            "problem": None,
                        },
                        {
                            "scan_id": "van12-000482",
                            "tracking_number": "4HMX8QW2ZRT9KC",
                            "result": "rejected",
                            "sequence": None,
                            "problem": {
                                "type": "urn:shiptrack:problem:invalid_occurred_at",
                                "title": "Invalid event time",
                                "status": 422,
                                "detail": "`occurred_at` is more than 72 hours old "
                                "(MAX_SCAN_AGE_HOURS): too late to record.",
                                "code": "invalid_occurred_at",
                                "occurred_at": "too_old",
                            },
                        },
                    ]
                }
            ]
        }
    )

    results: list[ScanResult] = Field(description="One per scan, in the order sent.")


class RecipientCorrection(RequestBody):
    name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None


class DestinationCorrection(RequestBody):
    zip_code: ZipCode | None = None
    address_line: AddressLine | None = None
    city: City | None = None


class DeliveryDetailsUpdate(RequestBody):
    """The fields to correct; those left out keep their value."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "recipient": {"email": "grace.hopper@example.com"},
                    "destination": {"address_line": "77 Massachusetts Avenue"},
                }
            ]
        }
    )

    recipient: RecipientCorrection | None = None
    destination: DestinationCorrection | None = None

    @model_validator(mode="after")
    def require_a_correction(self) -> Self:
        parts = [part for part in (self.recipient, self.destination) if part is not None]
        if not any(part.model_fields_set for part in parts):
            raise ValueError("send at least one field to correct")
        for part in parts:
            nulled = sorted(f for f in part.model_fields_set if getattr(part, f) is None)
            if nulled and part is self.recipient and {"name", "email"} & set(nulled):
                raise ValueError("recipient name and email cannot be null")
            if nulled and part is self.destination and "zip_code" in nulled:
                raise ValueError("destination zip_code cannot be null")
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


class EventLocation(BaseModel):
    zip_code: str | None
    city: str | None
    lat: float | None = Field(description="Null in public views.")
    lon: float | None = Field(description="Null in public views.")


class PublicTimelineEvent(BaseModel):
    """A timeline event as anyone with the tracking number sees it: no partner's note on a
    failed attempt, no coordinates (a scan at the door would show the address)."""

    model_config = ConfigDict(from_attributes=True)

    sequence: int = Field(description="Recording order: 1, 2, 3... gapless.")
    status: ShipmentStatus
    occurred_at: datetime = Field(description="When it happened; the timeline's order.")
    location_zip: str | None = Field(description="The same as `location.zip_code`.")
    location: EventLocation | None = None
    failure_reason: FailureReason | None = Field(
        default=None, description="Why a delivery attempt failed; `description` says it in words."
    )
    description: str | None
    created_at: datetime = Field(description="When it was recorded.")
    livemode: bool = Field(description="False for a test shipment's events.")

    @model_validator(mode="before")
    @classmethod
    def date_older_events(cls, data: Any) -> Any:
        """An event stored before `occurred_at` existed (a response kept for an idempotent
        replay) happened when it was recorded."""
        if isinstance(data, dict) and "occurred_at" not in data and "created_at" in data:
            return {**data, "occurred_at": data["created_at"]}
        return data


class TimelineEvent(PublicTimelineEvent):
    note: str | None = Field(
        default=None,
        description="The partner's note on a failed attempt: only its seller and partner see it.",
    )


_EXAMPLE_TIMELINE: list[JsonValue] = [
    {
        "sequence": 1,
        "status": "placed",
        "occurred_at": "2026-11-22T09:30:00Z",
        "location_zip": None,
        "location": None,
        "description": "Shipment created",
        "created_at": "2026-11-22T09:30:00Z",
        "livemode": True,
    },
    {
        "sequence": 2,
        "status": "in_transit",
        "occurred_at": "2026-11-22T14:05:00Z",
        "location_zip": "02110",
        "location": {"zip_code": "02110", "city": "Boston", "lat": None, "lon": None},
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
    "attempts": 0,
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
    attempts: int = Field(
        default=0,
        description="Failed delivery attempts so far; MAX_DELIVERY_ATTEMPTS (3) of them return "
        "the shipment to its sender.",
    )
    timeline: list[TimelineEvent] = Field(
        description="By `occurred_at` (when each event happened), oldest first."
    )


class ShipmentListItem(ShipmentRead):
    """A shipment in a list: as `ShipmentRead`, but the timeline may be left out."""

    timeline: list[TimelineEvent] | None = Field(  # type: ignore[assignment]
        description="By `occurred_at`, oldest first; null when the list was asked for "
        "without it (`include`)."
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
    timeline: list[PublicTimelineEvent] = Field(
        description=f"The newest {PUBLIC_TIMELINE_LENGTH} events recorded at most, by "
        "`occurred_at`, oldest first."
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
