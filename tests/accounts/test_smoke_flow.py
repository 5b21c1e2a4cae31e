from __future__ import annotations

import httpx

from tests.factories import account_with_token


async def test_seller_signs_up_logs_in_and_reads_itself(client: httpx.AsyncClient) -> None:
    account, headers = await account_with_token(client, "seller")
    response = await client.get("/seller/me", headers=headers)
    assert response.status_code == 200
    assert response.json()["id"] == account["id"]
