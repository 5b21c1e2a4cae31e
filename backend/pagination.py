"""Opaque keyset cursors: the (created_at, id) of the last item of a page."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime

from backend.errors import DomainError

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


class InvalidCursor(DomainError):
    status_code = 422
    code = "invalid_cursor"
    title = "Invalid cursor"
    default_detail = "The cursor is not one this API returned; start again without it."


def encode_cursor(created_at: datetime, item_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{item_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, item_id = base64.urlsafe_b64decode(padded).decode().split("|")
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        # In UTC, as stored: an offset near the ends of the calendar overflows here, not later.
        return moment.astimezone(UTC), uuid.UUID(item_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor() from None
