"""Queries for accounts; no decisions here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Generic, TypeVar

from sqlalchemy import ColumnElement, bindparam
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from backend.accounts.models import AccountKind, Partner, PartnerStatus, Seller
from backend.db import Database, Record, Statement, table_of, violated_constraint

AccountT = TypeVar("AccountT", bound=Seller | Partner)

MODELS: dict[AccountKind, type[Seller] | type[Partner]] = {
    AccountKind.seller: Seller,
    AccountKind.partner: Partner,
}


def _caller_statement(model: type[Seller] | type[Partner]) -> Statement:
    table = table_of(model)
    # A partner's status decides what it may do with shipments.
    extra = [table.c.status] if model is Partner else []
    return Statement(
        sa_select(table.c.token_version, table.c.name, table.c.email_verified_at, *extra).where(
            table.c.id == bindparam("id")
        )
    )


# What checking an access token needs, by primary key: the account's token version (and its
# name, which a shipment's emails show, and whether its email is verified, which limits what an
# unverified seller may create), without building the entity.
CALLER_STATEMENTS = {kind: _caller_statement(model) for kind, model in MODELS.items()}


async def caller_row(database: Database, kind: AccountKind, account_id: uuid.UUID) -> Record | None:
    """The account's `token_version`, `name` and `email_verified_at` (and a partner's
    `status`), or None if it does not exist."""
    return await database.fetch_one(CALLER_STATEMENTS[kind], id=account_id)


class DuplicateEmail(Exception):
    pass


class AccountRepository(Generic[AccountT]):
    """Accounts as ORM entities, in the request's unit of work.

    The unit's connection is taken at the first query, not when the repository is made, so
    work before it (a password hash, a rate-limit check) holds no pooled connection.
    """

    def __init__(self, database: Database, model: type[AccountT]) -> None:
        self._database = database
        self._model = model

    async def get(self, account_id: uuid.UUID) -> AccountT | None:
        """One primary-key lookup, no relationships."""
        session = await self._database.session()
        return await session.get(self._model, account_id)

    async def lock(self, account_id: uuid.UUID) -> AccountT | None:
        """The account as it is now, locked until the transaction ends."""
        return await self._locked(col(self._model.id) == account_id)

    async def lock_by_email(self, email: str) -> AccountT | None:
        return await self._locked(col(self._model.email) == email.lower())

    async def _locked(self, condition: ColumnElement[bool]) -> AccountT | None:
        # populate_existing: an entity this session loaded before the lock is refreshed, so
        # decisions read what the lock protects, not an earlier snapshot.
        statement = (
            select(self._model)
            .where(condition)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        session = await self._database.session()
        return (await session.execute(statement)).scalars().first()

    async def get_by_email(self, email: str) -> AccountT | None:
        statement = select(self._model).where(self._model.email == email.lower())
        session = await self._database.session()
        return (await session.execute(statement)).scalars().first()

    async def add(self, account: AccountT) -> AccountT:
        """Insert; raises `DuplicateEmail` when the unique email constraint refuses it."""
        session = await self._database.session()
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
        session = await self._database.session()
        await session.flush()

    async def release_connection(self) -> None:
        """After reads only: end the transaction and give the connection back before slow work
        that needs none. Accounts already loaded stay readable, but a change to one is not
        saved; a later query begins a new transaction."""
        await self._database.release_after_reading()


async def list_partners(
    database: Database, status: PartnerStatus | None, limit: int
) -> Sequence[Partner]:
    """Oldest first, so that the operator's queue of pending partners reads in order."""
    statement = select(Partner).order_by(col(Partner.created_at), col(Partner.id)).limit(limit)
    if status is not None:
        statement = statement.where(col(Partner.status) == status.value)
    session = await database.session()
    return (await session.execute(statement)).scalars().all()
