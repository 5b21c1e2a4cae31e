"""What every package's request schemas are built from: the base of a JSON request body (unknown
fields refused) and validated field types.

Every string that reaches PostgreSQL goes through `reject_unstorable`: NUL characters and lone
surrogates pass pydantic but make PostgreSQL (or the UTF-8 encoder) fail with a 500.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
)

PASSWORD_MIN_BYTES = 8
PASSWORD_MAX_BYTES = 72  # bcrypt ignores (and bcrypt 5 refuses) anything longer


# The base of every JSON request body: an unknown field is refused, not ignored. (A comment, not
# a docstring: pydantic would publish a docstring as the schema's description.)
class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


def reject_unstorable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def check_password_bytes(value: str) -> str:
    size = len(reject_unstorable(value).encode("utf-8"))
    if not PASSWORD_MIN_BYTES <= size <= PASSWORD_MAX_BYTES:
        raise ValueError(
            f"must be {PASSWORD_MIN_BYTES} to {PASSWORD_MAX_BYTES} bytes long in UTF-8"
        )
    return value


_ZIP_CODE = re.compile(r"^[A-Z0-9](?:[A-Z0-9 -]{0,8}[A-Z0-9])?$")


def normalize_zip_code(value: str) -> str:
    """Upper-case, single spaces, leading zeros kept: '  sw1a   1aa' -> 'SW1A 1AA'."""
    normalized = " ".join(reject_unstorable(value).upper().split())
    if not _ZIP_CODE.match(normalized):
        raise ValueError("must be 1-10 letters, digits, spaces or hyphens")
    return normalized


def lowercase_email(value: str) -> str:
    return value.lower()


def reject_unstorable_input(value: object) -> object:
    """`reject_unstorable` for raw input, before a type check has made it a string."""
    return reject_unstorable(value) if isinstance(value, str) else value


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(reject_unstorable),
    Field(examples=["Ada Lovelace"]),
]
AddressLine = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=300),
    AfterValidator(reject_unstorable),
]
Email = Annotated[
    EmailStr,
    BeforeValidator(reject_unstorable_input),
    AfterValidator(lowercase_email),
    Field(max_length=254, examples=["ada@example.com"]),
]
Password = Annotated[
    str,
    Field(
        description=f"{PASSWORD_MIN_BYTES} to {PASSWORD_MAX_BYTES} bytes in UTF-8.",
        examples=["correct horse battery"],
        max_length=PASSWORD_MAX_BYTES,
    ),
    AfterValidator(check_password_bytes),
]
ZipCode = Annotated[
    str,
    Field(
        description="Postal code as text; normalized to upper case, leading zeros kept.",
        examples=["02139"],
        max_length=20,
    ),
    AfterValidator(normalize_zip_code),
]


def _future_in_utc(value: datetime) -> datetime:
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be a date between the years 1 and 9999 in UTC") from None
    if in_utc <= datetime.now(UTC):
        raise ValueError("must be in the future")
    return in_utc


FutureUtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(_future_in_utc),
    Field(description="RFC 3339 with an offset, in the future.", examples=["2026-11-25T17:00:00Z"]),
]
