from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from backend.accounts.tokens import LinkTokens
from backend.config import Settings
from backend.db import DatabaseDep, SessionDep
from backend.shipments.delivery_codes import DeliveryCodes
from backend.shipments.public import PublicTracking
from backend.shipments.service import ShipmentService


async def shipment_service(database: DatabaseDep, request: Request) -> ShipmentService:
    # Settings and Redis straight from the app state: every shipment request resolves this, and
    # each sub-dependency FastAPI resolves costs more than the attribute lookup.
    settings: Settings = request.app.state.settings
    redis: Redis = request.app.state.redis
    codes = DeliveryCodes(
        settings.jwt_secret_key.get_secret_value(),
        ttl_seconds=settings.delivery_code_ttl_seconds,
        max_attempts=settings.delivery_code_max_attempts,
    )
    return ShipmentService(
        database,
        codes,
        redis,
        links=LinkTokens(settings),
        public_base_url=settings.public_base_url,
        default_transit_days=settings.default_transit_days,
        review_link_ttl_seconds=settings.review_link_ttl_seconds,
    )


async def public_tracking(session: SessionDep, request: Request) -> PublicTracking:
    settings: Settings = request.app.state.settings
    return PublicTracking(session, LinkTokens(settings))


ShipmentServiceDep = Annotated[ShipmentService, Depends(shipment_service)]
PublicTrackingDep = Annotated[PublicTracking, Depends(public_tracking)]
