"""Partner assignment: a new shipment takes one slot of a partner's capacity, and a shipment
that ends gives it back (product.md §5). PostgreSQL settles races: the slot is taken by a
conditional UPDATE of the partner's row, so capacity is never exceeded.

Taking the slot locks the partner's row until the transaction ends, and every create into the
partner's zips needs that row. So a create chooses its partner first (`choose`, which takes
no slot and makes no other create wait), writes the shipment, and takes the slot last
(`take_slot`): the row is held only from there to the commit. If the partner filled up in
between, the create undoes its writes and chooses again (ShipmentService.create).

Every create takes its locks in that one order (the partner's key share, the tags it inserts,
the partner's slot), and holds the slot only while it commits: no two creates can wait for
each other in a cycle.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import String, bindparam, cast, exists, select, update
from sqlalchemy.dialects.postgresql import array, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.accounts.models import Partner, PartnerStatus

# Approved partners serving the zip that still have room (pending and suspended partners are
# never candidates, product.md §4). `@>` with an array of the column's own type, so that the
# GIN index on the zip codes can serve it.
_HAS_ROOM = (
    col(Partner.active_shipments) < col(Partner.max_handling_capacity),
    col(Partner.status) == PartnerStatus.approved.value,
)
_SERVES_ZIP = col(Partner.serviceable_zip_codes).bool_op("@>")(
    array([cast(bindparam("zip"), String)])
)
_CANDIDATES = (
    select(col(Partner.id), col(Partner.name))
    .where(_SERVES_ZIP, *_HAS_ROOM)
    .order_by(col(Partner.active_shipments), col(Partner.id))
    .limit(1)
)
# The choice locks the partner FOR KEY SHARE: the lock the new shipment's foreign key takes on
# it anyway. It keeps the partner from being deleted, never conflicts with another create's
# slot (an UPDATE of a column outside any key), and conflicts only with FOR UPDATE, which an
# operator's change or a password reset holds for a moment. The first choice skips partners
# held that way rather than queue behind them.
_LEAST_LOADED_FREE = _CANDIDATES.with_for_update(read=True, key_share=True, skip_locked=True)
_LEAST_LOADED = _CANDIDATES.with_for_update(read=True, key_share=True)
_PARTNER_WITH_ROOM_EXISTS = select(exists(_CANDIDATES))
# Approved partners serving the zip, with room or not: whether the zip is served at all, and
# whether one given partner serves it.
_SERVING = select(col(Partner.id)).where(
    _SERVES_ZIP, col(Partner.status) == PartnerStatus.approved.value
)
_SERVING_PARTNER_EXISTS = select(exists(_SERVING))
_PARTNER_SERVES = select(exists(_SERVING.where(col(Partner.id) == bindparam("partner_id"))))
# The slot of the partner chosen earlier, if it still has room: PostgreSQL re-checks the room
# on the row it locks, after any wait for a concurrent create's slot.
_TAKE_SLOT = (
    update(Partner)
    .where(col(Partner.id) == bindparam("partner_id"), *_HAS_ROOM)
    .values(active_shipments=col(Partner.active_shipments) + 1)
    .returning(col(Partner.id))
)


SIMULATED_PARTNER_NAME = "Simulated partner"
# A seller's simulated partner has an id derived from the seller's: found without a query.
_SIMULATED_PARTNERS = uuid.UUID("5b1d7c3e-9f0a-4c2e-8d6b-7a3f1e0c9b24")


def simulated_partner_id(seller_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_SIMULATED_PARTNERS, str(seller_id))


@dataclass(frozen=True, slots=True)
class Coverage:
    """Whether an approved partner serves a zip code, and whether one of them has room now."""

    served: bool
    available: bool


@dataclass(frozen=True, slots=True)
class AssignedPartner:
    id: uuid.UUID
    name: str


class PartnerAssignment:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def choose(self, zip_code: str) -> AssignedPartner | None:
        """The least-loaded partner for a new shipment to `zip_code` (None: nobody has room),
        without taking its slot. Follow with `take_slot`, as late as the create allows."""
        parameters = {"zip": zip_code}
        chosen = (await self._session.execute(_LEAST_LOADED_FREE, parameters)).first()
        # Every partner with room is held FOR UPDATE for the moment: wait for the least loaded.
        # After the wait PostgreSQL re-checks the row, and drops it if it no longer has room.
        while chosen is None:
            if not await self._session.scalar(_PARTNER_WITH_ROOM_EXISTS, parameters):
                return None
            chosen = (await self._session.execute(_LEAST_LOADED, parameters)).first()
        return AssignedPartner(id=chosen.id, name=chosen.name)

    async def coverage(self, zip_code: str) -> Coverage:
        """Whether a shipment to `zip_code` could be assigned now, and if not, why: nobody
        serves the zip, or everyone who does is full. Locks nothing."""
        parameters = {"zip": zip_code}
        if await self._session.scalar(_PARTNER_WITH_ROOM_EXISTS, parameters):
            return Coverage(served=True, available=True)
        served = bool(await self._session.scalar(_SERVING_PARTNER_EXISTS, parameters))
        return Coverage(served=served, available=False)

    async def take_slot(self, partner_id: uuid.UUID) -> bool:
        """Take one slot of `partner_id`'s capacity; False if it has no room (or is no longer
        approved). The partner's row stays locked until the commit."""
        taken = await self._session.execute(_TAKE_SLOT, {"partner_id": partner_id})
        return taken.first() is not None

    async def simulated_partner(self, seller_id: uuid.UUID) -> AssignedPartner:
        """The seller's simulated partner, which carries its test shipments (product.md §11.2),
        created at its first use. Its own status keeps it out of every live assignment and
        every login; it serves no zip code and its capacity is never counted."""
        partner_id = simulated_partner_id(seller_id)
        await self._session.execute(
            insert(Partner)
            .values(
                id=partner_id,
                name=SIMULATED_PARTNER_NAME,
                email=f"simulated-{seller_id}@partners.shiptrack.invalid",
                password_hash="",  # matches no password; the account cannot log in anyway
                serviceable_zip_codes=[],
                max_handling_capacity=1,
                status=PartnerStatus.simulated.value,
                simulates_for_seller_id=seller_id,
            )
            .on_conflict_do_nothing()
        )
        return AssignedPartner(id=partner_id, name=SIMULATED_PARTNER_NAME)

    async def serves(self, partner_id: uuid.UUID, zip_code: str) -> bool:
        """Whether this partner (approved) serves `zip_code`."""
        parameters = {"zip": zip_code, "partner_id": partner_id}
        return bool(await self._session.scalar(_PARTNER_SERVES, parameters))

    async def move_slot(self, from_id: uuid.UUID, to_id: uuid.UUID) -> bool:
        """Take a slot of `to_id` and give back one of `from_id`: a shipment changing partner.
        False when `to_id` has no room; the caller then undoes the release (a savepoint).

        The two rows are updated in the order of their ids, so two shipments moving between
        the same partners in opposite directions cannot wait for each other in a cycle."""
        if to_id < from_id:
            if not await self.take_slot(to_id):
                return False
            await self.release(from_id)
            return True
        await self.release(from_id)
        return await self.take_slot(to_id)

    async def release(self, partner_id: uuid.UUID) -> None:
        """Give back the slot of a shipment that reached a terminal status."""
        await self._session.execute(
            update(Partner)
            .where(col(Partner.id) == partner_id)
            .values(active_shipments=col(Partner.active_shipments) - 1)
        )
