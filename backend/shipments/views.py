"""Shipments as the API shows them, read in one query without the ORM.

Reads are the hot path (product.md §9). Loading ORM objects with their relationships cost about
five times what the SQL itself does (bench/README.md has the profile), so reading one shipment or a
page selects exactly the view's columns: the partner's name and the review joined in, the timeline
and the tags aggregated per row. One round trip per request, whatever the page size.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    bindparam,
    case,
    false,
    func,
    null,
    or_,
    select,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.types import NullType

from backend.accounts.models import Partner
from backend.db import Database, Record, Statement, table_of, utcnow
from backend.pagination import after_last, newest_first
from backend.shipments.models import Review, Shipment, ShipmentEvent, ShipmentTag, Tag
from backend.shipments.public import tracking_url
from backend.shipments.repository import Visibility, visible_to_owner
from backend.shipments.schemas import (
    DestinationRead,
    PartnerSummary,
    RecipientRead,
    ReviewRead,
    ShipmentRead,
    TimelineEvent,
)
from backend.shipments.status import TERMINAL, ShipmentStatus

_shipments = table_of(Shipment)
_events = table_of(ShipmentEvent)
_partners = table_of(Partner)
_reviews = table_of(Review)
_tags = table_of(Tag)
_shipment_tags = table_of(ShipmentTag)

# PostgreSQL hands back an array of row values, which asyncpg decodes as a list of typed tuples;
# SQLAlchemy has no type for that, so it passes the value through untouched (NullType).
_TIMELINE = type_coerce(
    select(
        func.array_agg(
            aggregate_order_by(
                tuple_(
                    _events.c.sequence,
                    _events.c.status,
                    _events.c.location_zip,
                    _events.c.description,
                    _events.c.created_at,
                ),
                _events.c.sequence,
            )
        )
    )
    .where(_events.c.shipment_id == _shipments.c.id)
    .scalar_subquery(),
    NullType(),
)
_TAG_NAMES = func.array(
    select(_tags.c.name)
    .join(_shipment_tags, _shipment_tags.c.tag_id == _tags.c.id)
    .where(_shipment_tags.c.shipment_id == _shipments.c.id)
    .order_by(_tags.c.name)
    .scalar_subquery()
)
# When the shipment ended: the time of its terminal event, which is always its last (a final
# status takes no further events). A lateral join, so that each row looks it up once.
_ENDED = (
    select(_events.c.created_at.label("ended_at"))
    .where(
        _events.c.shipment_id == _shipments.c.id,
        _events.c.sequence == _shipments.c.last_sequence,
        or_(*(_shipments.c.status == status.value for status in TERMINAL)),
    )
    .lateral("ended")
)
# A partner keeps the recipient's contact fields for PARTNER_PII_DAYS after the shipment ends
# (product.md §4). Decided here, so that the fields never leave the database once redacted.
_REDACTED = func.coalesce(_ENDED.c.ended_at < bindparam("pii_cutoff"), false())
_CONTACT_COLUMNS = (
    _shipments.c.destination_address_line,
    _shipments.c.recipient_name,
    _shipments.c.recipient_email,
    _shipments.c.recipient_phone,
)


def _contact_columns(*, for_partner: bool) -> list[ColumnElement[Any]]:
    if not for_partner:
        return [*_CONTACT_COLUMNS, false().label("recipient_redacted")]
    return [
        *(
            case((_REDACTED, null()), else_=column).label(column.name)
            for column in _CONTACT_COLUMNS
        ),
        _REDACTED.label("recipient_redacted"),
    ]


def _view_select(owner_column: str) -> Select[Any]:
    for_partner = owner_column == "partner_id"
    joined = _shipments.join(_partners, _partners.c.id == _shipments.c.partner_id).outerjoin(
        _reviews, _reviews.c.shipment_id == _shipments.c.id
    )
    if for_partner:
        joined = joined.outerjoin(_ENDED, true())
    return (
        select(
            _shipments.c.id,
            _shipments.c.tracking_number,
            _shipments.c.status,
            _shipments.c.content,
            _shipments.c.weight_kg,
            _shipments.c.destination_zip,
            _shipments.c.destination_city,
            *_contact_columns(for_partner=for_partner),
            _shipments.c.reference,
            _shipments.c.seller_id,
            _shipments.c.partner_id,
            _partners.c.name.label("partner_name"),
            _shipments.c.estimated_delivery,
            _shipments.c.version,
            _shipments.c.created_at,
            _shipments.c.updated_at,
            _reviews.c.rating.label("review_rating"),
            _reviews.c.comment.label("review_comment"),
            _reviews.c.created_at.label("review_created_at"),
            _TIMELINE.label("timeline"),
            _TAG_NAMES.label("tags"),
        )
        .select_from(joined)
        .where(*visible_to_owner(owner_column))
    )


def one_query(owner_column: str) -> Select[Any]:
    return _view_select(owner_column).where(_shipments.c.id == bindparam("shipment_id"))


def page_query(owner_column: str, *, by_status: bool, by_tag: bool, after: bool) -> Select[Any]:
    """Newest first, keyset-paginated on (created_at, id)."""
    statement = _view_select(owner_column)
    if by_status:
        statement = statement.where(_shipments.c.status == bindparam("status"))
    if by_tag:
        tagged = (
            select(_shipment_tags.c.shipment_id)
            .join(_tags, _tags.c.id == _shipment_tags.c.tag_id)
            .where(_tags.c.name == bindparam("tag"))
        )
        statement = statement.where(_shipments.c.id.in_(tagged))
    if after:
        last_created_at = bindparam("last_created_at", type_=_shipments.c.created_at.type)
        last_id = bindparam("last_id", type_=_shipments.c.id.type)
        statement = statement.where(
            after_last(_shipments.c.created_at, _shipments.c.id, last_created_at, last_id)
        )
    return statement.order_by(*newest_first(_shipments.c.created_at, _shipments.c.id)).limit(
        bindparam("limit")
    )


ONE = {owner_column: Statement(one_query(owner_column)) for owner_column in Visibility.OWNERS}


@functools.cache
def page_statement(owner_column: str, *, by_status: bool, by_tag: bool, after: bool) -> Statement:
    """Compiled on first use: there are eight combinations of filters per kind of owner."""
    return Statement(page_query(owner_column, by_status=by_status, by_tag=by_tag, after=after))


class ShipmentViews:
    def __init__(self, database: Database, public_base_url: str, *, partner_pii_days: int) -> None:
        self._database = database
        self._public_base_url = public_base_url
        self._pii_retention = timedelta(days=partner_pii_days)

    def _owner_parameters(self, visibility: Visibility) -> dict[str, Any]:
        owner_column, owner_id = visibility.owner
        parameters: dict[str, Any] = {"owner_id": owner_id}
        if owner_column == "partner_id":
            parameters["pii_cutoff"] = utcnow() - self._pii_retention
        return parameters

    async def one(self, shipment_id: uuid.UUID, visibility: Visibility) -> ShipmentRead | None:
        owner_column, _ = visibility.owner
        row = await self._database.fetch_one(
            ONE[owner_column], shipment_id=shipment_id, **self._owner_parameters(visibility)
        )
        return None if row is None else self._view(row)

    async def page(
        self,
        visibility: Visibility,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
        status: ShipmentStatus | None,
        tag: str | None,
    ) -> list[ShipmentRead]:
        """Newest first; `after` is the (created_at, id) of the last item of the previous page."""
        owner_column, _ = visibility.owner
        statement = page_statement(
            owner_column, by_status=status is not None, by_tag=tag is not None, after=bool(after)
        )
        parameters = {**self._owner_parameters(visibility), "limit": limit}
        if status is not None:
            parameters["status"] = status
        if tag is not None:
            parameters["tag"] = tag
        if after is not None:
            parameters["last_created_at"], parameters["last_id"] = after
        rows = await self._database.fetch_all(statement, **parameters)
        return [self._view(row) for row in rows]

    def _view(self, row: Record) -> ShipmentRead:
        return ShipmentRead(
            id=row["id"],
            tracking_number=row["tracking_number"],
            status=row["status"],
            content=row["content"],
            weight_kg=row["weight_kg"],
            destination=DestinationRead(
                zip_code=row["destination_zip"],
                address_line=row["destination_address_line"],
                city=row["destination_city"],
            ),
            recipient=RecipientRead(
                name=row["recipient_name"],
                email=row["recipient_email"],
                phone=row["recipient_phone"],
            ),
            tags=row["tags"],
            reference=row["reference"],
            seller_id=row["seller_id"],
            partner=PartnerSummary(id=row["partner_id"], name=row["partner_name"]),
            estimated_delivery=row["estimated_delivery"],
            version=row["version"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            tracking_url=tracking_url(self._public_base_url, row["tracking_number"]),
            recipient_redacted=row["recipient_redacted"],
            review=_review(row),
            timeline=_timeline(row["timeline"] or ()),
        )


def _review(row: Record) -> ReviewRead | None:
    if row["review_rating"] is None:
        return None
    return ReviewRead(
        rating=row["review_rating"],
        comment=row["review_comment"],
        created_at=row["review_created_at"],
    )


def _timeline(events: Sequence[tuple[Any, ...]]) -> list[TimelineEvent]:
    return [
        TimelineEvent(
            sequence=sequence,
            status=status,
            location_zip=location_zip,
            description=description,
            created_at=created_at,
        )
        for sequence, status, location_zip, description, created_at in events
    ]
