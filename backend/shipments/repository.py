"""Queries for shipments, in the request's session. Every lookup by id carries the caller's
ownership in its WHERE clause (`Visibility`), so a shipment that is not the caller's is never
loaded, let alone shown.

Entities come back with their timeline (`Shipment.timeline`, `lazy="selectin"`: one more query
for any number of shipments), the partner's name and the tag names in the same row; the review,
when there is one, is joined in. Nothing else loads.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BindParameter,
    ColumnElement,
    DateTime,
    Select,
    String,
    and_,
    any_,
    bindparam,
    delete,
    false,
    func,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, joinedload, load_only, raiseload, selectinload
from sqlmodel import col

from backend.accounts.models import Partner, PartnerStatus, Seller
from backend.pagination import after_last, newest_first
from backend.shipments.models import Shipment, ShipmentTag, Tag
from backend.shipments.status import ShipmentStatus

# The tag names of the row's shipment, sorted, as one array column. Correlated to the shipment
# only: a page filtered by tag joins shipment_tags too, and must still show every tag.
_TAG_NAMES = func.array(
    select(col(Tag.name))
    .join(ShipmentTag, col(ShipmentTag.tag_id) == col(Tag.id))
    .where(col(ShipmentTag.shipment_id) == col(Shipment.id))
    .order_by(col(Tag.name))
    .correlate(Shipment)
    .scalar_subquery()
).label("tags")

# What a recipient's public view shows of a shipment (and `last_sequence`, which selects the
# newest events): no contact fields, no delivery code.
_PUBLIC_COLUMNS = (
    Shipment.id,
    Shipment.tracking_number,
    Shipment.status,
    Shipment.estimated_delivery,
    Shipment.destination_zip,
    Shipment.destination_city,
    Shipment.last_sequence,
    Shipment.livemode,
)


@dataclass(frozen=True, slots=True)
class Visibility:
    """Whose shipments a query may return: a seller's own, or a partner's assigned ones; live
    ones, or (a test key's) test ones only."""

    seller_id: uuid.UUID | None = None
    partner_id: uuid.UUID | None = None
    livemode: bool = True

    @classmethod
    def of(cls, account: Seller | Partner, *, livemode: bool = True) -> Visibility:
        """Sellers see the shipments they created; partners the ones assigned to them."""
        if isinstance(account, Seller):
            return cls(seller_id=account.id, livemode=livemode)
        return cls(partner_id=account.id, livemode=livemode)

    @property
    def for_partner(self) -> bool:
        return self.partner_id is not None

    @property
    def owner_id(self) -> uuid.UUID:
        owner_id = self.partner_id or self.seller_id
        assert owner_id is not None
        return owner_id


# Statements are built once, with bound parameters, for each kind of owner and each filter:
# SQLAlchemy then finds their compiled form by a cache key it computes only once per statement.
_OWNER_ID: BindParameter[uuid.UUID] = bindparam("owner_id")
_SHIPMENT_ID: BindParameter[uuid.UUID] = bindparam("shipment_id")


def _visible_to(for_partner: bool, livemode: bool) -> list[ColumnElement[bool]]:
    """Whose shipments these are, for a query that joins the shipment's partner: a seller's
    own of the caller's mode, or a partner's assigned ones while that partner is approved
    (product.md §4). The mode is a literal, not a parameter: it is a column of the seller's
    indexes, which a generic plan can then still use as a range. A real partner carries live
    shipments only (test shipments go to the seller's simulated partner), so a partner's test
    key sees none."""
    if not for_partner:
        return [col(Shipment.seller_id) == _OWNER_ID, col(Shipment.livemode) == _mode(livemode)]
    if not livemode:
        return [false()]
    return [
        col(Shipment.partner_id) == _OWNER_ID,
        col(Partner.status) == PartnerStatus.approved.value,
    ]


def _mode(livemode: bool) -> ColumnElement[bool]:
    return true() if livemode else false()


@dataclass(frozen=True, slots=True)
class LoadedShipment:
    """A shipment entity (its timeline loaded) with what its views show from other tables."""

    shipment: Shipment
    partner_name: str
    tags: list[str]


def _shipments_of(for_partner: bool, livemode: bool) -> Select[Any]:
    """Shipments the caller may see, with the partner's name, the tags and the review."""
    return (
        select(Shipment, col(Partner.name), _TAG_NAMES)
        .join(Partner, col(Partner.id) == col(Shipment.partner_id))
        .where(*_visible_to(for_partner, livemode))
        .options(joinedload(Shipment.review))  # type: ignore[arg-type]
    )


@functools.cache
def _one(for_partner: bool, livemode: bool, *, lock: bool) -> Select[Any]:
    statement = _shipments_of(for_partner, livemode).where(col(Shipment.id) == _SHIPMENT_ID)
    return statement.with_for_update(of=Shipment) if lock else statement


@functools.cache
def _locked_by_tracking_numbers(for_partner: bool, livemode: bool) -> Select[Any]:
    """Several shipments, locked in the order of their ids: two batches that share shipments
    take their locks in the same order, and never wait for each other in a cycle."""
    numbers = bindparam("tracking_numbers", type_=ARRAY(String))
    return (
        _shipments_of(for_partner, livemode)
        .where(col(Shipment.tracking_number) == any_(numbers))
        .order_by(col(Shipment.id))
        .with_for_update(of=Shipment)
    )


@functools.cache
def _page(
    for_partner: bool,
    livemode: bool,
    *,
    by_status: bool,
    by_tag: bool,
    by_reference: bool,
    after: bool,
    with_timeline: bool,
) -> Select[Any]:
    """Newest first, keyset-paginated on (created_at, id).

    Each variant is one range of one index, read in order until the page is full: the owner's
    shipments (ix_shipments_{seller,partner}_created), the owner's shipments in one status
    (ix_shipments_{seller,partner}_status_created), or the owner's links to one tag
    (ix_shipment_tags_{seller,partner}_tag_created, which carry the shipment's created_at). A
    rare or absent tag or status then costs what a common one does, never a walk through every
    shipment of the owner."""
    statement = _shipments_of(for_partner, livemode)
    key: tuple[Any, Any] = col(Shipment.created_at), col(Shipment.id)
    if by_status:
        statement = statement.where(col(Shipment.status) == bindparam("status"))
    if by_reference:
        # A seller's own reference (ix_shipments_seller_mode_reference_created).
        statement = statement.where(col(Shipment.reference) == bindparam("reference"))
    if by_tag:
        tagged = aliased(ShipmentTag, name="tagged")
        owned = (
            [col(tagged.partner_id) == _OWNER_ID]
            if for_partner
            else [col(tagged.seller_id) == _OWNER_ID, col(tagged.livemode) == _mode(livemode)]
        )
        # A scalar subquery, not a join: the tag's id is then a constant of the index range.
        tag_id = select(col(Tag.id)).where(col(Tag.name) == bindparam("tag")).scalar_subquery()
        statement = statement.join(tagged, col(tagged.shipment_id) == col(Shipment.id)).where(
            *owned, col(tagged.tag_id) == tag_id
        )
        # The link's copies of the shipment's key, so that the index gives the order.
        key = col(tagged.created_at), col(tagged.shipment_id)
    if after:
        last_created_at = bindparam("last_created_at", type_=DateTime(timezone=True))
        statement = statement.where(after_last(*key, last_created_at, bindparam("last_id")))
    if not with_timeline:
        statement = statement.options(*_WITHOUT_TIMELINE[for_partner])
    return statement.order_by(*newest_first(*key)).limit(bindparam("limit"))


# A page without the timelines loads none of their events (and raises if a view reads one). A
# partner's view still needs the time of the newest event: when an ended shipment's recipient
# data is redacted.
_WITHOUT_TIMELINE = {
    False: (raiseload(Shipment.timeline),),  # type: ignore[arg-type]
    True: (raiseload(Shipment.timeline), selectinload(Shipment.last_event)),  # type: ignore[arg-type]
}


@functools.cache
def _public(*, recent_events: bool) -> Select[Shipment, str]:
    """A shipment's public fields and its partner's name, by tracking number."""
    recent = selectinload if recent_events else raiseload
    return (
        select(Shipment, col(Partner.name))
        .join(Partner, col(Partner.id) == col(Shipment.partner_id))
        .where(col(Shipment.tracking_number) == bindparam("tracking_number"))
        .options(
            load_only(*_PUBLIC_COLUMNS),  # type: ignore[arg-type]
            raiseload(Shipment.timeline),  # type: ignore[arg-type]
            recent(Shipment.recent_timeline),  # type: ignore[arg-type]
        )
    )


def _loaded(rows: Any) -> list[LoadedShipment]:
    return [LoadedShipment(shipment, name, list(tags)) for shipment, name, tags in rows]


class ShipmentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    # --- reading -------------------------------------------------------------------------

    async def get(self, shipment_id: uuid.UUID, visibility: Visibility) -> LoadedShipment | None:
        return await self._one(shipment_id, visibility, lock=False)

    async def lock(self, shipment_id: uuid.UUID, visibility: Visibility) -> LoadedShipment | None:
        """The shipment, locked against concurrent changes until the transaction ends.

        Asked once more when it is not found: a lock that waited for a concurrent change
        re-checks the shipment's new row against the partner row joined before the wait. A
        change that moved the shipment to another partner (a correction) then drops the row
        for everyone; the second statement joins the partner it has now, and finds it for its
        seller and its new partner only."""
        found = await self._one(shipment_id, visibility, lock=True)
        if found is None:
            found = await self._one(shipment_id, visibility, lock=True)
        return found

    async def lock_by_tracking_numbers(
        self, tracking_numbers: list[str], visibility: Visibility
    ) -> dict[str, LoadedShipment]:
        """The caller's shipments among these tracking numbers, by number, locked until the
        transaction ends; numbers that are not the caller's are simply absent."""
        statement = _locked_by_tracking_numbers(visibility.for_partner, visibility.livemode)
        parameters = {"tracking_numbers": tracking_numbers, "owner_id": visibility.owner_id}
        found = _loaded(await self._session.execute(statement, parameters))
        return {loaded.shipment.tracking_number: loaded for loaded in found}

    async def _one(
        self, shipment_id: uuid.UUID, visibility: Visibility, *, lock: bool
    ) -> LoadedShipment | None:
        statement = _one(visibility.for_partner, visibility.livemode, lock=lock)
        parameters = {"shipment_id": shipment_id, "owner_id": visibility.owner_id}
        found = _loaded(await self._session.execute(statement, parameters))
        return found[0] if found else None

    async def page(
        self,
        visibility: Visibility,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
        status: ShipmentStatus | None,
        tag: str | None,
        reference: str | None = None,
        with_timeline: bool = True,
    ) -> list[LoadedShipment]:
        """Newest first, keyset-paginated on (created_at, id): `after` is the last item of the
        previous page. Without the timelines, their events are not loaded at all."""
        statement = _page(
            visibility.for_partner,
            visibility.livemode,
            by_status=status is not None,
            by_tag=tag is not None,
            by_reference=reference is not None,
            after=after is not None,
            with_timeline=with_timeline,
        )
        parameters: dict[str, Any] = {"owner_id": visibility.owner_id, "limit": limit}
        if status is not None:
            parameters["status"] = status
        if tag is not None:
            parameters["tag"] = tag
        if reference is not None:
            parameters["reference"] = reference
        if after is not None:
            parameters["last_created_at"], parameters["last_id"] = after
        return _loaded(await self._session.execute(statement, parameters))

    async def by_tracking_number(
        self, tracking_number: str, *, recent_events: bool
    ) -> tuple[Shipment, str] | None:
        """A shipment's public fields and its partner's name, with the newest events
        (`Shipment.recent_timeline`) when `recent_events`; never the recipient's data."""
        statement = _public(recent_events=recent_events)
        found = await self._session.execute(statement, {"tracking_number": tracking_number})
        row = found.first()
        return None if row is None else (row[0], row[1])

    # --- tags ----------------------------------------------------------------------------

    async def replace_tags(self, shipment_id: uuid.UUID, names: list[str]) -> None:
        """Point the shipment at exactly these tags, creating the ones that do not exist yet."""
        await self._session.execute(
            delete(ShipmentTag).where(col(ShipmentTag.shipment_id) == shipment_id)
        )
        await self.add_tags(shipment_id, names)

    async def move_tags_to_partner(self, shipment_id: uuid.UUID, partner_id: uuid.UUID) -> None:
        """Keep the links' copy of the shipment's partner (ShipmentTag) after it changed."""
        await self._session.execute(
            update(ShipmentTag)
            .where(col(ShipmentTag.shipment_id) == shipment_id)
            .values(partner_id=partner_id)
        )

    async def add_tags(self, shipment_id: uuid.UUID, names: list[str]) -> None:
        if not names:
            return
        tag_names = bindparam("names", sorted(names), type_=ARRAY(String))
        # Sorted names: concurrent first uses of the same tags lock them in one order.
        create_missing = insert(Tag).from_select(["name"], select(func.unnest(tag_names)))
        await self._session.execute(create_missing.on_conflict_do_nothing())
        # A statement of its own, after the insert: its snapshot sees tags that a concurrent
        # transaction created (and committed) while our insert waited on them. The links copy
        # the shipment's owners and creation time from its row (flushed by now).
        columns = ["shipment_id", "tag_id", "seller_id", "partner_id", "created_at", "livemode"]
        await self._session.execute(
            insert(ShipmentTag).from_select(
                columns,
                select(
                    col(Shipment.id),
                    col(Tag.id),
                    col(Shipment.seller_id),
                    col(Shipment.partner_id),
                    col(Shipment.created_at),
                    col(Shipment.livemode),
                )
                .join(Tag, col(Tag.name) == any_(tag_names))
                .where(col(Shipment.id) == shipment_id),
            )
        )

    # --- limits --------------------------------------------------------------------------

    async def count_unverified_shipment(self, seller_id: uuid.UUID, limit: int) -> bool:
        """Count one more shipment of a seller whose email is unverified; False (nothing
        counted) when it already has `limit`.

        Counted in the seller's row under the row's lock: concurrent creates queue on it and
        each re-checks the count, so the cap holds exactly. A seller verified meanwhile passes
        (and the count it no longer needs goes up by one)."""
        counted = await self._session.scalar(
            update(Seller)
            .where(
                col(Seller.id) == seller_id,
                or_(
                    col(Seller.email_verified_at).is_not(None),
                    col(Seller.unverified_shipments) < limit,
                ),
            )
            .values(unverified_shipments=col(Seller.unverified_shipments) + 1)
            .returning(col(Seller.id))
        )
        return counted is not None

    async def lock_expired_placed(
        self, cutoff: datetime, batch_size: int
    ) -> list[tuple[uuid.UUID, Seller, bool, uuid.UUID]]:
        """(id, seller, livemode, partner id) of up to `batch_size` shipments `placed` since
        before `cutoff` that no one else holds, oldest first, locked until the transaction ends.
        SKIP LOCKED: concurrent sweeps take disjoint rows, and one a seller or partner is
        changing right now is left for the next sweep (which re-reads its status)."""
        statement = (
            select(col(Shipment.id), Seller, col(Shipment.livemode), col(Shipment.partner_id))
            .join(Seller, col(Seller.id) == col(Shipment.seller_id))
            .where(
                and_(
                    # A literal, like the predicate of ix_shipments_placed_created: with a bound
                    # parameter, a generic plan could not prove it and would leave the index out.
                    col(Shipment.status) == literal_column(f"'{ShipmentStatus.placed.value}'"),
                    col(Shipment.created_at) < cutoff,
                )
            )
            .order_by(col(Shipment.created_at))
            .limit(batch_size)
            .with_for_update(of=Shipment, skip_locked=True)
        )
        rows = await self._session.execute(statement)
        return [
            (shipment_id, seller, livemode, partner_id)
            for shipment_id, seller, livemode, partner_id in rows
        ]
