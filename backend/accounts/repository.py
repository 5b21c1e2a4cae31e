"""Queries for accounts; no decisions here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Generic, TypeVar

from sqlalchemy import ColumnElement, and_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from backend.accounts.models import AccountKind, Partner, PartnerStatus, Seller
from backend.db import UnitOfWork, violated_constraint

AccountT = TypeVar("AccountT", bound=Seller | Partner)


async def account_by_id(
    session: AsyncSession, kind: AccountKind, account_id: uuid.UUID
) -> Seller | Partner | None:
    """One primary-key lookup, no relationships (none of an account's load by themselves); an
    account the session already holds costs nothing."""
    if kind is AccountKind.seller:
        return await session.get(Seller, account_id)
    return await session.get(Partner, account_id)


class DuplicateEmail(Exception):
    pass


class AccountRepository(Generic[AccountT]):
    """Accounts as ORM entities, in the request's unit of work.

    The session takes its connection at the first query, not when the repository is made, so
    work before it (a password hash, a rate-limit check) holds no pooled connection.
    """

    def __init__(self, unit: UnitOfWork, model: type[AccountT]) -> None:
        self._unit = unit
        self._session = unit.session
        self._model = model

    async def get(self, account_id: uuid.UUID) -> AccountT | None:
        """One primary-key lookup, no relationships (none of an account's load by themselves);
        an account this session already holds costs nothing."""
        return await self._session.get(self._model, account_id)

    async def lock(self, account_id: uuid.UUID) -> AccountT | None:
        """The account as it is now, locked until the transaction ends."""
        return await self._locked(col(self._model.id) == account_id)

    async def lock_by_email(self, email: str) -> AccountT | None:
        return await self._locked(self._with_email(email))

    async def _locked(self, condition: ColumnElement[bool]) -> AccountT | None:
        # populate_existing: an entity this session loaded before the lock is refreshed, so
        # decisions read what the lock protects, not an earlier snapshot.
        statement = (
            select(self._model)
            .where(condition)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return (await self._session.execute(statement)).scalars().first()

    async def get_by_email(self, email: str) -> AccountT | None:
        statement = select(self._model).where(self._with_email(email))
        return (await self._session.execute(statement)).scalars().first()

    def _with_email(self, email: str) -> ColumnElement[bool]:
        """The account with this address, among those that can log in: a seller's simulated
        partner (test mode) is no account anyone can log in to, ask a reset for, or manage."""
        matches = col(self._model.email) == email.lower()
        if self._model is Partner:
            return and_(matches, col(Partner.status) != PartnerStatus.simulated.value)
        return matches

    async def add(self, account: AccountT) -> AccountT:
        """Insert; raises `DuplicateEmail` when the unique email constraint refuses it."""
        session = self._session
        session.add(account)
        try:
            # A savepoint, so a refused insert leaves the request's transaction usable.
            async with session.begin_nested():
                await session.flush()
        except IntegrityError as error:
            if violated_constraint(error) == f"uq_{self._model.__tablename__}_email":
                raise DuplicateEmail() from None
            raise
        return account

    async def flush(self) -> None:
        await self._session.flush()

    async def release_connection(self) -> None:
        """After reads only: end the transaction and give the connection back before slow work
        that needs none. Accounts already loaded stay readable, but a change to one is not
        saved; a later query begins a new transaction."""
        await self._unit.release_after_reading()


async def list_partners(
    session: AsyncSession, status: PartnerStatus | None, limit: int
) -> Sequence[Partner]:
    """Oldest first, so that the operator's queue of pending partners reads in order."""
    statement = (
        select(Partner)
        .where(col(Partner.status) != PartnerStatus.simulated.value)
        .order_by(col(Partner.created_at), col(Partner.id))
        .limit(limit)
    )
    if status is not None:
        statement = statement.where(col(Partner.status) == status.value)
    return (await session.execute(statement)).scalars().all()
