"""Partner assignment: a new shipment takes one slot of a partner's capacity, and a shipment
that ends gives it back (product.md §5). PostgreSQL settles races: the slot is taken by a
conditional UPDATE of the partner's row, so capacity is never exceeded.

Taking the slot locks the partner's row until the transaction ends, and every create into the
partner's zips waits for that lock. A create therefore chooses its partner without a lock
(`least_loaded`), writes the shipment, and takes the slot last (`take_slot`), just before the
commit. Only when the chosen partner filled up in between does it fall back to `claim`, which
takes a slot before writing anything.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, String, Update, bindparam, cast, exists, select, update
from sqlalchemy.dialects.postgresql import array
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


def _least_loaded_candidate(*columns: Any) -> Select[Any]:
    return (
        select(*columns)
        .where(
            col(Partner.serviceable_zip_codes).bool_op("@>")(
                array([cast(bindparam("zip"), String)])
            ),
            *_HAS_ROOM,
        )
        .order_by(col(Partner.active_shipments), col(Partner.id))
        .limit(1)
    )


_CANDIDATES = _least_loaded_candidate(col(Partner.id))
# The late claim's choice. FOR KEY SHARE is the lock the new shipment's foreign key takes on the
# partner anyway; it never blocks another create's slot (an UPDATE of a non-key column), and
# SKIP LOCKED passes over a partner someone holds FOR UPDATE for longer (a create that fell back
# to `claim`, an operator's change) instead of queueing behind it.
_LEAST_LOADED = _least_loaded_candidate(col(Partner.id), col(Partner.name)).with_for_update(
    read=True, key_share=True, skip_locked=True
)
_TAKE_SLOT = (
    update(Partner)
    .values(active_shipments=col(Partner.active_shipments) + 1)
    .returning(col(Partner.id), col(Partner.name))
)
# Both claims take one slot from the least-loaded candidate.
#
# First try: the least-loaded candidate that no concurrent create holds right now (SKIP
# LOCKED), so that simultaneous creates into one zip spread over its partners instead of
# queueing on one row. The row is locked before its room is re-checked, so capacity holds.
_CLAIM_FREE_PARTNER = _TAKE_SLOT.where(
    col(Partner.id) == _CANDIDATES.with_for_update(skip_locked=True).scalar_subquery()
)
# Then, when every candidate is busy: wait for the least-loaded one. A concurrent creator waits
# on the row lock, then PostgreSQL re-checks the room on the updated row, so capacity can never
# be exceeded. The statement considers exactly one partner: a locking query that moved on to
# the next candidate after a failed re-check would wait for it while still holding the first,
# and deadlock.
_CLAIM_PARTNER = _TAKE_SLOT.where(col(Partner.id) == _CANDIDATES.scalar_subquery(), *_HAS_ROOM)
_PARTNER_WITH_ROOM_EXISTS = select(exists(_CANDIDATES))
# The late claim: a slot of the partner chosen earlier, if it still has room (PostgreSQL re-checks
# the room on the row it locks, after any wait for a concurrent create).
_TAKE_SLOT_OF_CHOSEN = _TAKE_SLOT.where(col(Partner.id) == bindparam("partner_id"), *_HAS_ROOM)


@dataclass(frozen=True, slots=True)
class AssignedPartner:
    id: uuid.UUID
    name: str


class PartnerAssignment:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def least_loaded(self, zip_code: str) -> AssignedPartner | None:
        """The partner a new shipment to `zip_code` should go to, without taking its slot: no
        lock, so concurrent creates never wait here. Follow with `take_slot`."""
        chosen = (await self._session.execute(_LEAST_LOADED, {"zip": zip_code})).first()
        return None if chosen is None else AssignedPartner(id=chosen.id, name=chosen.name)

    async def take_slot(self, partner_id: uuid.UUID) -> bool:
        """Take one slot of `partner_id`'s capacity, if it still has room and is approved. The
        partner's row stays locked until the commit: call it as late as the create allows."""
        taken = await self._session.execute(_TAKE_SLOT_OF_CHOSEN, {"partner_id": partner_id})
        return taken.first() is not None

    async def claim(self, zip_code: str) -> AssignedPartner | None:
        """Take one slot of capacity from the best partner for `zip_code`, or return None."""
        claimed = await self._claim_attempt(_CLAIM_FREE_PARTNER, zip_code)
        # A candidate that filled up while we waited is not claimed; try again (a new snapshot)
        # while any partner still has room.
        for _ in range(10):
            if claimed is not None:
                return claimed
            if not await self._session.scalar(_PARTNER_WITH_ROOM_EXISTS, {"zip": zip_code}):
                return None
            claimed = await self._claim_attempt(_CLAIM_PARTNER, zip_code)
        return claimed

    async def _claim_attempt(self, claim: Update, zip_code: str) -> AssignedPartner | None:
        # In a savepoint: a candidate that fails PostgreSQL's re-check after a wait is not
        # updated but stays locked, and holding it while the next attempt waits for another
        # partner could deadlock two creates; rolling the savepoint back frees it.
        attempt = await self._session.begin_nested()
        claimed = (await self._session.execute(claim, {"zip": zip_code})).first()
        if claimed is None:
            await attempt.rollback()
            return None
        await attempt.commit()
        return AssignedPartner(id=claimed.id, name=claimed.name)

    async def release(self, partner_id: uuid.UUID) -> None:
        """Give back the slot of a shipment that reached a terminal status."""
        await self._session.execute(
            update(Partner)
            .where(col(Partner.id) == partner_id)
            .values(active_shipments=col(Partner.active_shipments) - 1)
        )
