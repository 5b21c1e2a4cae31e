from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from backend.accounts.dependencies import CurrentAccount, SettingsDep
from backend.accounts.models import Seller
from backend.accounts.tokens import LinkTokens
from backend.db import SessionDep
from backend.redis_client import RedisDep
from backend.shipments.delivery_codes import DeliveryCodes
from backend.shipments.repository import Visibility
from backend.shipments.service import ShipmentService


async def shipment_service(
    session: SessionDep, settings: SettingsDep, redis: RedisDep
) -> ShipmentService:
    codes = DeliveryCodes(
        settings.jwt_secret_key.get_secret_value(),
        ttl_seconds=settings.delivery_code_ttl_seconds,
        max_attempts=settings.delivery_code_max_attempts,
    )
    return ShipmentService(
        session,
        codes,
        redis,
        links=LinkTokens(settings),
        public_base_url=settings.public_base_url,
        default_transit_days=settings.default_transit_days,
        review_link_ttl_seconds=settings.review_link_ttl_seconds,
    )


async def visibility(account: CurrentAccount) -> Visibility:
    """Sellers see the shipments they created; partners the ones assigned to them."""
    if isinstance(account, Seller):
        return Visibility(seller_id=account.id)
    return Visibility(partner_id=account.id)


ShipmentServiceDep = Annotated[ShipmentService, Depends(shipment_service)]
VisibilityDep = Annotated[Visibility, Depends(visibility)]
