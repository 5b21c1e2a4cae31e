"""Idempotency keys: the first response to a seller's `Idempotency-Key`, replayed to every
retry with the same body (product.md §5). Stored in the shipment's own transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.shipments.models import IdempotencyRecord


@dataclass(frozen=True, slots=True)
class EarlierRequest:
    """The request that already holds an idempotency key, and the response it got."""

    fingerprint: str
    response_body: dict[str, Any] | None


class IdempotencyKeys:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def claim(
        self, seller_id: uuid.UUID, key: str, fingerprint: str, now: datetime
    ) -> EarlierRequest | None:
        """Reserve `key` for this request, or return the request that holds it.

        A concurrent request with the same key waits on the unique key until the first one
        commits (and then sees its record) or rolls back (and then takes the key itself). A
        record the retention purge deletes between the two statements frees the key: it is
        claimed again.
        """
        while True:
            claimed = await self._session.scalar(
                insert(IdempotencyRecord)
                .values(
                    seller_id=seller_id, key=key, request_fingerprint=fingerprint, created_at=now
                )
                .on_conflict_do_nothing()
                .returning(col(IdempotencyRecord.key))
            )
            if claimed is not None:
                return None
            earlier = (
                await self._session.execute(
                    select(
                        col(IdempotencyRecord.request_fingerprint),
                        col(IdempotencyRecord.response_body),
                    ).where(
                        col(IdempotencyRecord.seller_id) == seller_id,
                        col(IdempotencyRecord.key) == key,
                    )
                )
            ).first()
            if earlier is not None:
                return EarlierRequest(earlier[0], earlier[1])

    async def record_response(
        self, seller_id: uuid.UUID, key: str, shipment_id: uuid.UUID, body: dict[str, Any]
    ) -> None:
        await self._session.execute(
            update(IdempotencyRecord)
            .where(
                col(IdempotencyRecord.seller_id) == seller_id,
                col(IdempotencyRecord.key) == key,
            )
            .values(shipment_id=shipment_id, response_status=201, response_body=body)
        )
