"""Authenticating a request costs one primary-key query and loads nothing else."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import StatementLog
from tests.factories import account_with_token


@pytest.mark.parametrize(("kind", "table"), [("seller", "sellers"), ("partner", "partners")])
async def test_me_loads_the_account_with_one_primary_key_query(
    client: httpx.AsyncClient, sql_log: StatementLog, kind: str, table: str
) -> None:
    account, headers = await account_with_token(client, kind)
    sql_log.statements.clear()

    response = await client.get(f"/{kind}/me", headers=headers)

    assert response.status_code == 200
    assert response.json()["id"] == account["id"]
    queries = sql_log.queries()
    assert len(queries) == 1, queries
    assert f"FROM {table}" in queries[0]
    assert f"WHERE {table}.id = " in queries[0]
