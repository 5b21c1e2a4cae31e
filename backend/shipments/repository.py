"""Statements for changing shipments. Every lookup by id carries the caller's ownership in its
WHERE clause.

Each statement is built with SQLAlchemy Core and compiled once (`backend.db.Statement`); they
run on the request's unit of work (`backend.db.Database`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    String,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert

from backend.accounts.models import AccountKind, Caller, Partner, PartnerStatus, Seller
from backend.db import Database, Record, Statement, json_text, table_of
from backend.shipments.models import IdempotencyRecord, Shipment, ShipmentEvent, ShipmentTag, Tag
from backend.shipments.status import ShipmentStatus

_shipments = table_of(Shipment)
_events = table_of(ShipmentEvent)
_partners = table_of(Partner)
_tags = table_of(Tag)
_shipment_tags = table_of(ShipmentTag)
_idempotency = table_of(IdempotencyRecord)
_sellers = table_of(Seller)

# Take one slot from the least-loaded approved partner serving the zip that still has room.
# Pending and suspended partners are never candidates (product.md §4). A concurrent
# creator waits on the row lock, then PostgreSQL re-checks `active_shipments <
# max_handling_capacity` on the updated row, so capacity can never be exceeded. The statement
# considers exactly one partner: a locking query that moved on to the next candidate after a
# failed re-check would wait for it while still holding the first, and deadlock.
_CLAIM_PARTNER = Statement(
    text(
        """
        UPDATE partners SET active_shipments = active_shipments + 1
        WHERE id = (
            SELECT id FROM partners
            WHERE :zip = ANY(serviceable_zip_codes) AND active_shipments < max_handling_capacity
              AND status = 'approved'
            ORDER BY active_shipments, id
            LIMIT 1
        )
        AND active_shipments < max_handling_capacity AND status = 'approved'
        RETURNING id, name
        """
    )
)
_PARTNER_WITH_ROOM_EXISTS = Statement(
    text(
        """
        SELECT EXISTS (
            SELECT 1 FROM partners
            WHERE :zip = ANY(serviceable_zip_codes) AND active_shipments < max_handling_capacity
              AND status = 'approved'
        )
        """
    )
)
_RELEASE_PARTNER = Statement(
    update(_partners)
    .where(_partners.c.id == bindparam("partner_id"))
    .values(active_shipments=_partners.c.active_shipments - 1)
)

_INSERT_SHIPMENT = Statement(
    insert(_shipments).values({column.name: bindparam(column.name) for column in _shipments.c})
)
# What a change may alter; the rest of a shipment is fixed at creation.
_CHANGEABLE = (
    "status",
    "estimated_delivery",
    "version",
    "last_sequence",
    "delivery_code_hash",
    "delivery_code_expires_at",
    "delivery_code_attempts",
    "delivery_code_failures",
    "updated_at",
)
_SAVE_SHIPMENT = Statement(
    update(_shipments)
    .where(_shipments.c.id == bindparam("shipment_id"))
    .values({name: bindparam(name) for name in _CHANGEABLE})
)
_APPEND_EVENT = Statement(
    insert(_events).values({column.name: bindparam(column.name) for column in _events.c})
)

_names = bindparam("names", type_=ARRAY(String))
_UNLINK_TAGS = Statement(
    delete(_shipment_tags).where(_shipment_tags.c.shipment_id == bindparam("shipment_id"))
)
# Sorted names: concurrent first uses of the same tags lock them in one order (no deadlock).
_CREATE_TAGS = Statement(
    insert(_tags).from_select(["name"], select(func.unnest(_names))).on_conflict_do_nothing()
)
# A statement of its own, after the insert: its snapshot sees tags that a concurrent transaction
# created (and committed) while our insert waited on them.
_LINK_TAGS = Statement(
    insert(_shipment_tags).from_select(
        ["shipment_id", "tag_id"],
        select(bindparam("shipment_id", type_=_shipments.c.id.type), _tags.c.id).where(
            _tags.c.name == any_(_names)
        ),
    )
)

_CLAIM_IDEMPOTENCY_KEY = Statement(
    insert(_idempotency)
    .values(
        seller_id=bindparam("seller_id"),
        key=bindparam("key"),
        request_fingerprint=bindparam("fingerprint"),
        shipment_id=None,
        response_status=None,
        response_body=None,
        created_at=bindparam("created_at"),
    )
    .on_conflict_do_nothing()
    .returning(_idempotency.c.key)
)
_EARLIER_REQUEST = Statement(
    select(_idempotency.c.request_fingerprint, _idempotency.c.response_body).where(
        _idempotency.c.seller_id == bindparam("seller_id"),
        _idempotency.c.key == bindparam("key"),
    )
)
_RECORD_RESPONSE = Statement(
    update(_idempotency)
    .where(
        _idempotency.c.seller_id == bindparam("seller_id"),
        _idempotency.c.key == bindparam("key"),
    )
    .values(
        shipment_id=bindparam("shipment_id"),
        response_status=201,
        response_body=bindparam("response_body"),
    )
)


# An unverified seller's shipment, counted in its row under the row's lock: concurrent creates
# queue on it and each re-checks the count, so the cap holds exactly. A seller verified
# meanwhile passes (and the count it no longer needs goes up by one).
_COUNT_UNVERIFIED_SHIPMENT = Statement(
    update(_sellers)
    .where(
        _sellers.c.id == bindparam("seller_id"),
        or_(
            _sellers.c.email_verified_at.is_not(None),
            _sellers.c.unverified_shipments < bindparam("limit"),
        ),
    )
    .values(unverified_shipments=_sellers.c.unverified_shipments + 1)
    .returning(_sellers.c.id)
)

# Shipments left `placed` since before the cutoff, oldest first, locked for the expiry sweep.
# SKIP LOCKED: concurrent sweeps take disjoint rows, and one a seller or partner is changing
# right now is left for the next sweep (which re-reads its status).
_EXPIRED_PLACED = Statement(
    select(_shipments.c.id, _shipments.c.seller_id)
    .where(
        _shipments.c.status == ShipmentStatus.placed.value,
        _shipments.c.created_at < bindparam("cutoff"),
    )
    .order_by(_shipments.c.created_at)
    .limit(bindparam("batch_size"))
    .with_for_update(of=_shipments, skip_locked=True)
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

    OWNERS = ("seller_id", "partner_id")

    @classmethod
    def of(cls, caller: Caller) -> Visibility:
        """Sellers see the shipments they created; partners the ones assigned to them."""
        if caller.kind is AccountKind.seller:
            return cls(seller_id=caller.account_id)
        return cls(partner_id=caller.account_id)

    @property
    def owner(self) -> tuple[str, uuid.UUID]:
        """The shipments column that names the owner, and the owner's id."""
        if self.seller_id is not None:
            return "seller_id", self.seller_id
        assert self.partner_id is not None
        return "partner_id", self.partner_id


@dataclass(slots=True)
class ShipmentState:
    """What a change reads and may alter of a shipment it holds (locked, or being created)."""

    id: uuid.UUID
    seller_id: uuid.UUID
    partner_id: uuid.UUID
    partner_name: str
    tracking_number: str
    status: ShipmentStatus
    content: str
    recipient_name: str
    recipient_email: str
    estimated_delivery: datetime
    version: int
    last_sequence: int
    delivery_code_hash: str | None
    delivery_code_expires_at: datetime | None
    delivery_code_attempts: int
    delivery_code_failures: int
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Record) -> ShipmentState:
        values = {name: row[name] for name in _STATE_FIELDS}
        values["status"] = ShipmentStatus(values["status"])
        return cls(**values)


_STATE_FIELDS = tuple(field.name for field in fields(ShipmentState))
# Read from the shipments table (the partner's name comes from a join).
_STORED_FIELDS = tuple(name for name in _STATE_FIELDS if name != "partner_name")


def visible_to_owner(owner_column: str) -> list[ColumnElement[bool]]:
    """Whose shipments these are, for a query that joins the shipment's partner: a seller's
    own, or a partner's assigned ones while that partner is approved (product.md §4)."""
    conditions = [_shipments.c[owner_column] == bindparam("owner_id")]
    if owner_column == "partner_id":
        conditions.append(_partners.c.status == PartnerStatus.approved.value)
    return conditions


def _lock_statement(owner_column: str) -> Statement:
    # The partner's name goes into the recipient's emails. The timeline is not read: a change
    # appends one event (by sequence), and the response reads the view afresh.
    return Statement(
        select(
            *(_shipments.c[name] for name in _STORED_FIELDS),
            _partners.c.name.label("partner_name"),
        )
        .join(_partners, _partners.c.id == _shipments.c.partner_id)
        .where(_shipments.c.id == bindparam("shipment_id"), *visible_to_owner(owner_column))
        .with_for_update(of=_shipments)
    )


_LOCK = {owner_column: _lock_statement(owner_column) for owner_column in Visibility.OWNERS}


@dataclass(frozen=True, slots=True)
class EarlierRequest:
    """The request that already holds an idempotency key, and the response it got."""

    fingerprint: str
    response_body: dict[str, Any] | None


class ShipmentRepository:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def claim_partner(self, zip_code: str) -> ClaimedPartner | None:
        """Take one slot of capacity from the best partner for `zip_code`, or return None."""
        # A candidate that filled up while we waited is not claimed; try again (a new snapshot)
        # while any partner still has room.
        for _ in range(10):
            claimed = await self._claim_attempt(zip_code)
            if claimed is not None:
                return claimed
            if not await self._database.fetch_value(_PARTNER_WITH_ROOM_EXISTS, zip=zip_code):
                return None
        return None

    async def _claim_attempt(self, zip_code: str) -> ClaimedPartner | None:
        # In a savepoint: a candidate that fails PostgreSQL's re-check after the wait is not
        # updated but stays locked, and holding it while the next attempt waits for another
        # partner could deadlock two creates; rolling the savepoint back frees it.
        attempt = await self._database.savepoint()
        await attempt.start()
        claimed = await self._database.fetch_one(_CLAIM_PARTNER, zip=zip_code)
        if claimed is None:
            await attempt.rollback()
            return None
        await attempt.commit()
        return ClaimedPartner(id=claimed["id"], name=claimed["name"])

    async def release_partner(self, partner_id: uuid.UUID) -> None:
        """Give back the slot of a shipment that reached a terminal status."""
        await self._database.execute(_RELEASE_PARTNER, partner_id=partner_id)

    async def insert(self, shipment: ShipmentState, **fixed: Any) -> None:
        """Store a new shipment: its state, plus the columns only creation sets (`fixed`)."""
        state = {name: getattr(shipment, name) for name in _STORED_FIELDS}
        await self._database.execute(_INSERT_SHIPMENT, **state, **fixed)

    async def lock(self, shipment_id: uuid.UUID, visibility: Visibility) -> ShipmentState | None:
        """The shipment, locked against concurrent changes until the transaction ends."""
        owner_column, owner_id = visibility.owner
        row = await self._database.fetch_one(
            _LOCK[owner_column], shipment_id=shipment_id, owner_id=owner_id
        )
        return None if row is None else ShipmentState.from_row(row)

    async def save(self, shipment: ShipmentState) -> None:
        """Write back what a change altered."""
        changed = {name: getattr(shipment, name) for name in _CHANGEABLE}
        await self._database.execute(_SAVE_SHIPMENT, shipment_id=shipment.id, **changed)

    async def append_event(
        self,
        shipment: ShipmentState,
        *,
        location_zip: str | None,
        description: str,
    ) -> None:
        """The timeline event for the shipment's current status and `last_sequence`."""
        await self._database.execute(
            _APPEND_EVENT,
            id=uuid.uuid4(),
            shipment_id=shipment.id,
            sequence=shipment.last_sequence,
            status=shipment.status,
            location_zip=location_zip,
            description=description,
            created_at=shipment.updated_at,
        )

    async def replace_tags(self, shipment_id: uuid.UUID, names: list[str]) -> None:
        """Point the shipment at exactly these tags, creating the ones that do not exist yet."""
        await self._database.execute(_UNLINK_TAGS, shipment_id=shipment_id)
        await self.add_tags(shipment_id, names)

    async def add_tags(self, shipment_id: uuid.UUID, names: list[str]) -> None:
        if names:
            await self._database.execute(_CREATE_TAGS, names=sorted(names))
            await self._database.execute(_LINK_TAGS, shipment_id=shipment_id, names=names)

    async def claim_idempotency_key(
        self, seller_id: uuid.UUID, key: str, fingerprint: str, now: datetime
    ) -> EarlierRequest | None:
        """Reserve `key` for this request, or return the request that holds it.

        A concurrent request with the same key waits on the unique key until the first one
        commits (and then sees its record) or rolls back (and then takes the key itself).
        """
        claimed = await self._database.fetch_value(
            _CLAIM_IDEMPOTENCY_KEY,
            seller_id=seller_id,
            key=key,
            fingerprint=fingerprint,
            created_at=now,
        )
        if claimed is not None:
            return None
        earlier = await self._database.fetch_one(_EARLIER_REQUEST, seller_id=seller_id, key=key)
        assert earlier is not None
        return EarlierRequest(earlier["request_fingerprint"], earlier["response_body"])

    async def record_idempotent_response(
        self, seller_id: uuid.UUID, key: str, shipment_id: uuid.UUID, body: dict[str, Any]
    ) -> None:
        await self._database.execute(
            _RECORD_RESPONSE,
            seller_id=seller_id,
            key=key,
            shipment_id=shipment_id,
            response_body=json_text(body),
        )

    async def count_unverified_shipment(self, seller_id: uuid.UUID, limit: int) -> bool:
        """Count one more shipment of a seller whose email is unverified; False (nothing
        counted) when it already has `limit`."""
        counted = await self._database.fetch_value(
            _COUNT_UNVERIFIED_SHIPMENT, seller_id=seller_id, limit=limit
        )
        return counted is not None

    async def lock_expired_placed(
        self, cutoff: datetime, batch_size: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """(id, seller id) of up to `batch_size` shipments `placed` since before `cutoff` that
        no one else holds, locked until the transaction ends."""
        rows = await self._database.fetch_all(_EXPIRED_PLACED, cutoff=cutoff, batch_size=batch_size)
        return [(row["id"], row["seller_id"]) for row in rows]
