"""Queries for API keys; no decisions here."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, func, or_, text, update
from sqlalchemy import select as sql_select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from backend.accounts.api_keys.models import ApiKey
from backend.accounts.api_keys.secret import PresentedSecret
from backend.accounts.models import AccountKind, Partner, Seller


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What authenticating with a key needs of its row (read as plain columns: no entity)."""

    id: uuid.UUID
    account_kind: AccountKind
    scopes: list[str]
    livemode: bool
    expires_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyWithAccount:
    key: StoredKey
    account: Seller | Partner


_KEY_COLUMNS = (
    col(ApiKey.id),
    col(ApiKey.account_kind),
    col(ApiKey.scopes),
    col(ApiKey.livemode),
    col(ApiKey.expires_at),
    col(ApiKey.last_used_at),
)
# The account comes as an entity, into the request's session, as a token's account does.
_KEY_WITH_ACCOUNT = (
    sql_select(col(ApiKey.digest), *_KEY_COLUMNS, Seller, Partner)
    .outerjoin(Seller, col(Seller.id) == col(ApiKey.seller_id))
    .outerjoin(Partner, col(Partner.id) == col(ApiKey.partner_id))
    .where(col(ApiKey.prefix) == bindparam("prefix"))
)


async def key_with_account(
    session: AsyncSession, presented: PresentedSecret
) -> KeyWithAccount | None:
    """The key whose digest matches, with its account, in one query: what a token's account
    lookup costs. Found by prefix, then told apart by digest, compared in constant time."""
    found: KeyWithAccount | None = None
    rows = await session.execute(_KEY_WITH_ACCOUNT, {"prefix": presented.prefix})
    for digest, key_id, kind, scopes, livemode, expires_at, last_used_at, seller, partner in rows:
        # Every candidate is compared, so the time taken does not say which one matched.
        if hmac.compare_digest(digest, presented.digest):
            account = seller if seller is not None else partner
            assert account is not None  # the `one_owner` constraint and its foreign keys
            key = StoredKey(key_id, AccountKind(kind), scopes, livemode, expires_at, last_used_at)
            found = KeyWithAccount(key, account)
    return found


class ApiKeyRepository:
    def __init__(self, session: AsyncSession, kind: AccountKind, account_id: uuid.UUID) -> None:
        self._session = session
        self._kind = kind
        self._account_id = account_id
        owner = ApiKey.seller_id if kind is AccountKind.seller else ApiKey.partner_id
        self._owned = col(owner) == account_id

    async def lock_account_keys(self) -> None:
        """Serialise key creation per account until the transaction ends, so that concurrent
        creates cannot pass the cap together. An advisory lock: the account's row stays free
        for assignment and logins."""
        await self._session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0))"),
            {"lock": f"api-keys:{self._kind.value}:{self._account_id}"},
        )

    async def count(self) -> int:
        statement = select(func.count()).select_from(ApiKey).where(self._owned)
        return int((await self._session.execute(statement)).scalar_one())

    async def add(self, key: ApiKey) -> ApiKey:
        self._session.add(key)
        await self._session.flush()
        return key

    async def all(self) -> Sequence[ApiKey]:
        statement = (
            select(ApiKey)
            .where(self._owned)
            .order_by(col(ApiKey.created_at).desc(), col(ApiKey.id).desc())
        )
        return (await self._session.execute(statement)).scalars().all()

    async def delete(self, key_id: uuid.UUID) -> bool:
        """Delete one of the account's keys; False when it has none with this id."""
        statement = (
            delete(ApiKey).where(self._owned, col(ApiKey.id) == key_id).returning(col(ApiKey.id))
        )
        return (await self._session.execute(statement)).first() is not None


async def mark_used(session: AsyncSession, key_id: uuid.UUID, now: datetime, every: int) -> None:
    """Record a use, unless one was recorded less than `every` seconds before `now`: the
    condition keeps replicas that race to record the same minute to one write."""
    last_used = col(ApiKey.last_used_at)
    statement = (
        update(ApiKey)
        .where(
            col(ApiKey.id) == key_id,
            or_(last_used.is_(None), last_used <= now - timedelta(seconds=every)),
        )
        .values(last_used_at=now)
    )
    await session.execute(statement)
