"""Queries for accounts; no decisions here."""

from __future__ import annotations

import uuid
from typing import Generic, TypeVar

from sqlalchemy import Select, bindparam
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel, select

from backend.accounts.models import Partner, Seller
from backend.db import table_of, violated_constraint

AccountT = TypeVar("AccountT", bound=Seller | Partner)


def token_version_query(model: type[SQLModel]) -> Select[int]:
    table = table_of(model)
    return sa_select(table.c.token_version).where(table.c.id == bindparam("id"))


# Built once: SQLAlchemy then reuses each statement's cache key instead of deriving it per request.
_TOKEN_VERSION_QUERIES: dict[type[SQLModel], Select[int]] = {
    model: token_version_query(model) for model in (Seller, Partner)
}


class DuplicateEmail(Exception):
    pass


class AccountRepository(Generic[AccountT]):
    def __init__(self, session: AsyncSession, model: type[AccountT]) -> None:
        self._session = session
        self._model = model

    async def get(self, account_id: uuid.UUID) -> AccountT | None:
        """One primary-key lookup, no relationships."""
        return await self._session.get(self._model, account_id)

    async def token_version(self, account_id: uuid.UUID) -> int | None:
        """The account's current token version, or None if it does not exist: all that checking
        an access token needs, without building the entity (a Core query on the table)."""
        statement = _TOKEN_VERSION_QUERIES[self._model]
        return (await self._session.execute(statement, {"id": account_id})).scalar()

    async def lock(self, account_id: uuid.UUID) -> AccountT | None:
        """The account, locked until the transaction ends."""
        statement = select(self._model).where(self._model.id == account_id).with_for_update()
        return (await self._session.execute(statement)).scalars().first()

    async def get_by_email(self, email: str) -> AccountT | None:
        statement = select(self._model).where(self._model.email == email.lower())
        return (await self._session.execute(statement)).scalars().first()

    async def add(self, account: AccountT) -> AccountT:
        """Insert; raises `DuplicateEmail` when the unique email constraint refuses it."""
        self._session.add(account)
        try:
            # A savepoint, so a refused insert leaves the request's transaction usable.
            async with self._session.begin_nested():
                await self._session.flush()
        except IntegrityError as error:
            if violated_constraint(error) == f"uq_{self._model.__tablename__}_email":
                raise DuplicateEmail() from None
            raise
        return account

    async def flush(self) -> None:
        await self._session.flush()
