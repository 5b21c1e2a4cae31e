"""Shipments that stay `placed` too long are cancelled automatically, freeing their partner's
slot: otherwise a seller could create shipments it never hands over and hold a region's whole
capacity (product.md §10, `PLACED_EXPIRY_HOURS`).

The outbox worker runs the sweep periodically. Each batch is one transaction that locks a few
of the oldest expired shipments with FOR UPDATE SKIP LOCKED, so several workers sweeping at once
take disjoint shipments, and one that a seller or partner is changing at that moment is left
for the next sweep. Each is cancelled by the seller's own cancel path (ShipmentService.cancel):
the same timeline event, feed events, webhooks, recipient emails, live update and freed slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.accounts.models import Seller
from backend.accounts.tokens import LinkTokens
from backend.config import Settings
from backend.db import UnitOfWork, unit_of_work, utcnow
from backend.redis_client import create_redis
from backend.shipments.delivery_codes import DeliveryCodes
from backend.shipments.limits import ShipmentLimits
from backend.shipments.repository import ShipmentRepository
from backend.shipments.service import ShipmentService

logger = logging.getLogger(__name__)

# Small: a batch holds its shipments', partners' and sellers' locks until it commits.
BATCH_SIZE = 20
# Live updates go out on a few connections of the sweep's own.
REDIS_CONNECTIONS = 2


def expiry_note(hours: int) -> str:
    return f"Cancelled automatically: not handed to the carrier within {hours} hours"


class PlacedExpiry:
    def __init__(
        self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._redis = redis
        self._codes = DeliveryCodes(
            settings.jwt_secret_key.get_secret_value(),
            ttl_seconds=settings.delivery_code_ttl_seconds,
            max_attempts=settings.delivery_code_max_attempts,
            max_failures_per_shipment=settings.delivery_code_max_failures_per_shipment,
        )
        self._limits = ShipmentLimits(redis, settings)
        self._links = LinkTokens(settings)
        self._age = timedelta(hours=settings.placed_expiry_hours)
        self._note = expiry_note(settings.placed_expiry_hours)

    async def sweep(self) -> int:
        """Cancel every shipment expired by now, batch by batch; returns how many."""
        cancelled = 0
        while True:
            in_batch = await self.sweep_batch()
            cancelled += in_batch
            if in_batch < BATCH_SIZE:
                return cancelled

    async def sweep_batch(self) -> int:
        """Cancel up to BATCH_SIZE expired shipments in one transaction; returns how many."""
        async with unit_of_work(self._sessionmaker) as unit:
            expired = await ShipmentRepository(unit.session).lock_expired_placed(
                utcnow() - self._age, BATCH_SIZE
            )
            # Their partners' rows in id order, as every change of two partners' rows takes
            # them (PartnerAssignment.move_slot): no cycle with a correction, or another sweep.
            for shipment_id, seller, livemode, _ in sorted(expired, key=lambda row: row[3]):
                service = self._service(unit, seller, livemode=livemode)
                await service.cancel(shipment_id, note=self._note)
        if expired:
            logger.info("cancelled %d shipments left placed too long", len(expired))
        return len(expired)

    def _service(self, unit: UnitOfWork, seller: Seller, *, livemode: bool) -> ShipmentService:
        """The seller's own view of its shipments, as its cancel request would have it (with a
        test key, for a test shipment: test shipments expire by the same rule)."""
        return ShipmentService(
            seller,
            unit,
            self._codes,
            self._redis,
            limits=self._limits,
            links=self._links,
            settings=self._settings,
            livemode=livemode,
        )


async def run_expiry_sweeps(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], stopping: asyncio.Event
) -> None:
    """Sweep every PLACED_EXPIRY_SWEEP_SECONDS until `stopping` is set. A failed sweep (the
    database or Redis restarting) is logged and tried again at the next interval."""
    assert settings.redis_url is not None
    redis = create_redis(settings, settings.redis_url, max_connections=REDIS_CONNECTIONS)
    expiry = PlacedExpiry(settings, sessionmaker, redis)
    try:
        while not stopping.is_set():
            try:
                await expiry.sweep()
            except Exception:
                logger.exception("expiry sweep failed; trying again at the next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), settings.placed_expiry_sweep_seconds)
    finally:
        await redis.aclose()
