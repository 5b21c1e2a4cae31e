"""HTTP routes for a seller's or a partner's own API keys: parse, call the service, return."""

# No `from __future__ import annotations`: FastAPI must see the real types of the route
# parameters built inside `add_api_key_routes`.

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status

from backend.accounts.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyList
from backend.accounts.api_keys.service import ApiKeyService, ScopeNotForKind
from backend.accounts.errors import AccessTokenRequired, ApiKeyNotFound, TooManyApiKeys
from backend.accounts.models import AccountKind, Partner, Seller
from backend.accounts.tokens import NO_STORE
from backend.db import unit_of_work_of
from backend.errors import problem_responses
from backend.request_body import NO_REQUEST_BODY


def add_api_key_routes(router: APIRouter, kind: AccountKind, account_dependency: Any) -> None:
    """`/api-keys` under a kind's router. `account_dependency` takes access tokens only, so a
    key can never create, list or delete keys (403 `access_token_required`)."""
    AccountDep = Annotated[Seller | Partner, Depends(account_dependency)]  # noqa: N806

    async def key_service(account: AccountDep, request: Request) -> ApiKeyService:
        return ApiKeyService(unit_of_work_of(request).session, kind, account.id)

    KeyServiceDep = Annotated[ApiKeyService, Depends(key_service)]  # noqa: N806

    @router.post(
        "/api-keys",
        operation_id=f"{kind.value}_create_api_key",
        status_code=status.HTTP_201_CREATED,
        response_model=ApiKeyCreated,
        responses=problem_responses(ScopeNotForKind, TooManyApiKeys, AccessTokenRequired),
    )
    async def create_api_key(
        body: ApiKeyCreate, keys: KeyServiceDep, response: Response
    ) -> ApiKeyCreated:
        """Create an API key for an integration; the answer holds its `secret`, shown this
        once (only a digest is kept).

        Send it as `Authorization: Bearer st_…`. It works on this account's routes that list
        `apiKey` among their security schemes, within its `scopes`; a `test` key sees and
        creates only test data. Keys are managed with an access token from a password login,
        never with another key. An account holds at most 20 keys (409 `too_many_keys`).
        """
        response.headers.update(NO_STORE)
        return await keys.create(body)

    @router.get(
        "/api-keys",
        operation_id=f"{kind.value}_list_api_keys",
        response_model=ApiKeyList,
        responses=problem_responses(AccessTokenRequired),
    )
    async def list_api_keys(keys: KeyServiceDep) -> ApiKeyList:
        """This account's keys, newest first, without their secrets."""
        return ApiKeyList(items=await keys.list_all())

    @router.delete(
        "/api-keys/{key_id}",
        operation_id=f"{kind.value}_delete_api_key",
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=[NO_REQUEST_BODY],
        responses=problem_responses(ApiKeyNotFound, AccessTokenRequired),
    )
    async def delete_api_key(key_id: uuid.UUID, keys: KeyServiceDep) -> None:
        """Delete a key: every request with it is refused from now on, on every server."""
        await keys.delete(key_id)
