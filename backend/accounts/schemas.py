"""Request and response bodies for accounts. Requests refuse unknown fields."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.accounts.models import PartnerStatus
from backend.fields import AddressLine, Email, Name, Password, RequestBody, ZipCode

ZipCodeList = Annotated[
    list[ZipCode],
    Field(min_length=1, max_length=100, description="Destination zip codes this partner serves."),
]
Capacity = Annotated[
    int,
    Field(ge=1, le=10_000, description="Most active (not yet delivered) shipments at once."),
]


class SellerCreate(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Acme Books",
                    "email": "orders@acme.example",
                    "password": "correct horse battery",
                    "zip_code": "02139",
                    "address": "1 Main St, Cambridge MA",
                }
            ]
        }
    )

    name: Name
    email: Email
    password: Password
    zip_code: ZipCode
    address: AddressLine | None = None


class SellerRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "0b6f1e9e-5d43-4c1e-9a51-3f8e2f7f9a10",
                    "name": "Acme Books",
                    "email": "orders@acme.example",
                    "zip_code": "02139",
                    "address": "1 Main St, Cambridge MA",
                    "email_verified_at": "2026-11-22T09:41:00Z",
                    "created_at": "2026-11-22T09:30:00Z",
                }
            ]
        },
    )

    id: uuid.UUID
    name: str
    email: str
    zip_code: str
    address: str | None
    email_verified_at: datetime | None = Field(
        description="When the address was confirmed through the sign-up email; null until then."
    )
    created_at: datetime


def _unique_zip_codes(zip_codes: list[str]) -> list[str]:
    return list(dict.fromkeys(zip_codes))


class PartnerCreate(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Speedy Couriers",
                    "email": "dispatch@speedy.example",
                    "password": "correct horse battery",
                    "serviceable_zip_codes": ["02139", "02140"],
                    "max_handling_capacity": 25,
                }
            ]
        }
    )

    name: Name
    email: Email
    password: Password
    serviceable_zip_codes: ZipCodeList
    max_handling_capacity: Capacity

    @model_validator(mode="after")
    def deduplicate_zip_codes(self) -> Self:
        self.serviceable_zip_codes = _unique_zip_codes(self.serviceable_zip_codes)
        return self


class PartnerUpdate(RequestBody):
    """Only the fields sent are changed; `null` is not a value any of them can take."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"serviceable_zip_codes": ["02139"], "max_handling_capacity": 40}]
        }
    )

    name: Name | None = None
    serviceable_zip_codes: ZipCodeList | None = None
    max_handling_capacity: Capacity | None = None

    @model_validator(mode="after")
    def refuse_nulls(self) -> Self:
        nulled = sorted(field for field in self.model_fields_set if getattr(self, field) is None)
        if nulled:
            raise ValueError(f"cannot be null: {', '.join(nulled)}")
        if self.serviceable_zip_codes is not None:
            self.serviceable_zip_codes = _unique_zip_codes(self.serviceable_zip_codes)
        return self


class PartnerRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "7c2d7a43-1f0b-4d8e-8a3a-52d1c0b9e6f4",
                    "name": "Speedy Couriers",
                    "email": "dispatch@speedy.example",
                    "serviceable_zip_codes": ["02139", "02140"],
                    "max_handling_capacity": 25,
                    "active_shipments": 3,
                    "status": "approved",
                    "suspended_reason": None,
                    "email_verified_at": None,
                    "created_at": "2026-11-22T09:30:00Z",
                }
            ]
        },
    )

    id: uuid.UUID
    name: str
    email: str
    serviceable_zip_codes: list[str]
    max_handling_capacity: int
    active_shipments: int = Field(
        description="Assigned shipments not yet delivered, cancelled or returned."
    )
    status: PartnerStatus = Field(
        description="`pending` until the Shiptrack operator approves the account: no shipments "
        "are assigned or shown before. `approved`: receives and sees shipments. `suspended`: "
        "shipment routes answer 403 `partner_suspended` and no new shipments are assigned."
    )
    suspended_reason: str | None = Field(
        description="Why the operator suspended the account; null unless suspended."
    )
    email_verified_at: datetime | None = Field(
        description="When the address was confirmed through the sign-up email; null until then."
    )
    created_at: datetime


class TokenForm(BaseModel):
    """OAuth2 password grant (RFC 6749 §4.3), sent as application/x-www-form-urlencoded."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "grant_type": "password",
                    "username": "orders@acme.example",
                    "password": "correct horse battery",
                }
            ]
        },
    )

    username: Annotated[Email, Field(description="The account's email address.")]
    password: Password
    grant_type: Literal["password"] | None = None
    # Standard OAuth2 fields that clients such as Scalar send; accepted and ignored.
    scope: Annotated[str, Field(max_length=200)] = ""
    client_id: Annotated[str | None, Field(max_length=200)] = None
    client_secret: Annotated[str | None, Field(max_length=200)] = None


class TokenResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIs...",
                    "token_type": "bearer",
                    "expires_in": 1800,
                }
            ]
        }
    )

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - not a secret
    expires_in: int = Field(description="Seconds until the token expires.")


class PasswordForgot(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"email": "orders@acme.example"}]})

    email: Email


class PasswordReset(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"token": "eyJhbGciOiJIUzI1NiIs...", "new_password": "a new long password"}
            ]
        }
    )

    token: Annotated[str, Field(min_length=1, max_length=2000, description="From the email.")]
    new_password: Password


class EmailVerification(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"email": "orders@acme.example", "email_verified_at": "2026-11-22T09:41:00Z"}
            ]
        }
    )

    email: str
    email_verified_at: datetime
