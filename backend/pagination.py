"""Keyset pagination, newest first on (created_at, id): the opaque cursors (the created_at and
id of the last item of a page), the condition for the rows after one, and the page split."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, UnaryExpression, tuple_
from sqlalchemy.orm import Mapped

from backend.errors import DomainError

# A table's column, or a mapped class's attribute (what sqlmodel's col() returns).
KeyColumn = ColumnElement[Any] | Mapped[Any]

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


def newest_first(
    created_at: KeyColumn, item_id: KeyColumn
) -> tuple[UnaryExpression[Any], UnaryExpression[Any]]:
    """The ORDER BY of every keyset page."""
    return created_at.desc(), item_id.desc()


def after_last(
    created_at: KeyColumn,
    item_id: KeyColumn,
    last_created_at: Any,
    last_id: Any,
) -> ColumnElement[bool]:
    """The rows that come after (last_created_at, last_id) in `newest_first` order: values, or
    bind parameters. A row comparison, which PostgreSQL reads as one range of an index on
    (owner, created_at, id) rather than two conditions to combine."""
    return tuple_(created_at, item_id) < tuple_(last_created_at, last_id)


class Keyed(Protocol):
    @property
    def created_at(self) -> datetime: ...
    @property
    def id(self) -> uuid.UUID: ...


K = TypeVar("K", bound=Keyed)


def split_page(rows: Sequence[K], limit: int) -> tuple[list[K], str | None]:
    """The page (the first `limit` of rows fetched with a limit of `limit + 1`) and the cursor
    of the next one: None when nothing follows."""
    items = list(rows[:limit])
    if len(rows) <= limit:
        return items, None
    return items, encode_cursor(items[-1].created_at, items[-1].id)
