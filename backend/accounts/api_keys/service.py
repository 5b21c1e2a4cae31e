"""Decisions about API keys: who may hold which scopes, how many, and what a key proves."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from backend.accounts.api_keys.models import (
    MAX_KEYS_PER_ACCOUNT,
    SCOPES_OF_KIND,
    ApiKey,
    KeyMode,
    Scope,
)
from backend.accounts.api_keys.repository import ApiKeyRepository, KeyWithAccount, key_with_account
from backend.accounts.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead
from backend.accounts.api_keys.secret import PresentedSecret, new_secret
from backend.accounts.errors import ApiKeyNotFound, InvalidToken, TooManyApiKeys
from backend.accounts.models import AccountKind
from backend.db import utcnow
from backend.errors import DomainError


class ScopeNotForKind(DomainError):
    status_code = 422
    code = "scope_not_allowed"
    title = "Scope not allowed"
    default_detail = "This kind of account cannot hold one of these scopes."


def read_model(key: ApiKey) -> ApiKeyRead:
    return ApiKeyRead(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=[Scope(scope) for scope in key.scopes],
        mode=KeyMode.live if key.livemode else KeyMode.test,
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
    )


class ApiKeyService:
    """One account's keys."""

    def __init__(self, session: AsyncSession, kind: AccountKind, account_id: uuid.UUID) -> None:
        self._kind = kind
        self._account_id = account_id
        self._keys = ApiKeyRepository(session, kind, account_id)

    async def create(self, body: ApiKeyCreate) -> ApiKeyCreated:
        allowed = SCOPES_OF_KIND[self._kind]
        refused = [scope.value for scope in body.scopes if scope not in allowed]
        if refused:
            raise ScopeNotForKind(
                f"A {self._kind.value} key cannot have {', '.join(refused)}; "
                f"allowed: {', '.join(sorted(allowed))}."
            )
        await self._keys.lock_account_keys()
        if await self._keys.count() >= MAX_KEYS_PER_ACCOUNT:
            raise TooManyApiKeys()
        secret = new_secret(body.mode)
        key = ApiKey(
            account_kind=self._kind,
            name=body.name,
            prefix=secret.prefix,
            digest=secret.digest,
            scopes=[scope.value for scope in body.scopes],
            livemode=body.mode is KeyMode.live,
            expires_at=body.expires_at,
        )
        if self._kind is AccountKind.seller:
            key.seller_id = self._account_id
        else:
            key.partner_id = self._account_id
        await self._keys.add(key)
        return ApiKeyCreated(**read_model(key).model_dump(), secret=secret.secret)

    async def list_all(self) -> list[ApiKeyRead]:
        return [read_model(key) for key in await self._keys.all()]

    async def delete(self, key_id: uuid.UUID) -> None:
        if not await self._keys.delete(key_id):
            raise ApiKeyNotFound()


async def verified_key(session: AsyncSession, presented: PresentedSecret) -> KeyWithAccount:
    """The key a well-formed secret proves, with its account; 401 `invalid_token` for an
    unknown or expired one (a deleted key is unknown)."""
    found = await key_with_account(session, presented)
    if found is None:
        raise InvalidToken("This API key is unknown or was deleted.")
    if found.key.expires_at is not None and found.key.expires_at <= utcnow():
        raise InvalidToken("This API key has expired.")
    return found
