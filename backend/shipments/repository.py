"""Queries for shipments. Every lookup by id carries the caller's ownership in its WHERE clause."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, raiseload
from sqlmodel import col

from backend.accounts.models import Partner
from backend.db import table_of
from backend.shipments.models import IdempotencyRecord, Review, Shipment, ShipmentTag, Tag

# Take one slot from the least-loaded partner serving the zip that still has room. A concurrent
# creator waits on the row lock, then PostgreSQL re-checks `active_shipments <
# max_handling_capacity` on the updated row, so capacity can never be exceeded. The statement
# considers exactly one partner: a locking query that moved on to the next candidate after a
# failed re-check would wait for it while still holding the first, and deadlock.
_CLAIM_PARTNER = text(
    """
    UPDATE partners SET active_shipments = active_shipments + 1
    WHERE id = (
        SELECT id FROM partners
        WHERE :zip = ANY(serviceable_zip_codes) AND active_shipments < max_handling_capacity
        ORDER BY active_shipments, id
        LIMIT 1
    )
    AND active_shipments < max_handling_capacity
    RETURNING id, name
    """
)
_PARTNER_WITH_ROOM_EXISTS = text(
    """
    SELECT EXISTS (
        SELECT 1 FROM partners
        WHERE :zip = ANY(serviceable_zip_codes) AND active_shipments < max_handling_capacity
    )
    """
)


@dataclass(frozen=True, slots=True)
class ClaimedPartner:
    id: uuid.UUID
    name: str


@dataclass(frozen=True, slots=True)
class Visibility:
    """Whose shipments a query may return: a seller's own, or a partner's assigned ones."""

    seller_id: uuid.UUID | None = None
    partner_id: uuid.UUID | None = None

    @property
    def owner(self) -> tuple[str, uuid.UUID]:
        """The shipments column that names the owner, and the owner's id."""
        if self.seller_id is not None:
            return "seller_id", self.seller_id
        assert self.partner_id is not None
        return "partner_id", self.partner_id

    def condition(self) -> ColumnElement[bool]:
        column, owner_id = self.owner
        return table_of(Shipment).c[column] == owner_id


class ShipmentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def claim_partner(self, zip_code: str) -> ClaimedPartner | None:
        """Take one slot of capacity from the best partner for `zip_code`, or return None."""
        # A candidate that filled up while we waited is not claimed; try again (a new snapshot)
        # while any partner still has room.
        for _ in range(10):
            claimed = await self._claim_attempt(zip_code)
            if claimed is not None:
                return claimed
            has_room = await self._session.execute(_PARTNER_WITH_ROOM_EXISTS, {"zip": zip_code})
            if not has_room.scalar():
                return None
        return None

    async def _claim_attempt(self, zip_code: str) -> ClaimedPartner | None:
        # In a savepoint: a candidate that fails PostgreSQL's re-check after the wait is not
        # updated but stays locked, and holding it while the next attempt waits for another
        # partner could deadlock two creates; rolling the savepoint back frees it.
        attempt = await self._session.begin_nested()
        claimed = (await self._session.execute(_CLAIM_PARTNER, {"zip": zip_code})).first()
        if claimed is None:
            await attempt.rollback()
            return None
        await attempt.commit()
        return ClaimedPartner(id=claimed.id, name=claimed.name)

    async def release_partner(self, partner_id: uuid.UUID) -> None:
        """Give back the slot of a shipment that reached a terminal status."""
        await self._session.execute(
            update(Partner)
            .where(col(Partner.id) == partner_id)
            .values(active_shipments=Partner.active_shipments - 1)
        )

    async def add(self, shipment: Shipment) -> None:
        self._session.add(shipment)
        await self._session.flush()

    async def lock(self, shipment_id: uuid.UUID, visibility: Visibility) -> Shipment | None:
        """The shipment, locked against concurrent changes until the transaction ends."""
        statement = (
            select(Shipment)
            .where(col(Shipment.id) == shipment_id, visibility.condition())
            .with_for_update(of=Shipment)
        )
        # The partner's name goes into the recipient's emails. The timeline is not loaded: a
        # change appends one event (by sequence), and the response reads the view afresh.
        statement = statement.options(
            joinedload(Shipment.partner),  # type: ignore[arg-type]
            raiseload(Shipment.timeline),  # type: ignore[arg-type]
        )
        result = await self._session.execute(statement)
        return result.scalars().first()

    async def get_by_tracking_number(self, tracking_number: str) -> Shipment | None:
        statement = (
            select(Shipment)
            .where(col(Shipment.tracking_number) == tracking_number)
            .options(joinedload(Shipment.partner))  # type: ignore[arg-type]
        )
        return (await self._session.execute(statement)).scalars().first()

    async def add_review(self, review: Review) -> bool:
        """Store the review; False if the shipment already has one (a unique constraint)."""
        self._session.add(review)
        try:
            async with self._session.begin_nested():
                await self._session.flush()
        except IntegrityError:
            return False
        return True

    async def replace_tags(self, shipment: Shipment, names: list[str]) -> None:
        """Point the shipment at exactly these tags, creating the ones that do not exist yet."""
        await self._session.execute(
            delete(ShipmentTag).where(col(ShipmentTag.shipment_id) == shipment.id)
        )
        if not names:
            return
        await self._session.execute(
            # Sorted: concurrent inserts of the same new tags lock them in one order (no deadlock).
            insert(Tag).values([{"name": name} for name in sorted(names)]).on_conflict_do_nothing()
        )
        # A statement of its own, after the insert: its snapshot sees tags that a concurrent
        # transaction created (and committed) while our insert waited on them.
        tag_ids = await self._session.scalars(select(col(Tag.id)).where(col(Tag.name).in_(names)))
        await self._session.execute(
            insert(ShipmentTag).values(
                [{"shipment_id": shipment.id, "tag_id": tag_id} for tag_id in tag_ids]
            )
        )

    async def claim_idempotency_key(
        self, seller_id: uuid.UUID, key: str, fingerprint: str
    ) -> IdempotencyRecord | None:
        """Reserve `key` for this request, or return the record of the request that holds it.

        A concurrent request with the same key waits on the unique key until the first one
        commits (and then sees its record) or rolls back (and then takes the key itself).
        """
        inserted = await self._session.execute(
            insert(IdempotencyRecord)
            .values(seller_id=seller_id, key=key, request_fingerprint=fingerprint)
            .on_conflict_do_nothing()
            .returning(col(IdempotencyRecord.key))
        )
        if inserted.scalar() is not None:
            return None
        existing = await self._session.get(IdempotencyRecord, (seller_id, key))
        assert existing is not None
        return existing

    async def record_idempotent_response(
        self, seller_id: uuid.UUID, key: str, shipment_id: uuid.UUID, body: dict[str, Any]
    ) -> None:
        await self._session.execute(
            update(IdempotencyRecord)
            .where(col(IdempotencyRecord.seller_id) == seller_id, col(IdempotencyRecord.key) == key)
            .values(shipment_id=shipment_id, response_status=201, response_body=body)
        )
