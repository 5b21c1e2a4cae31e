"""Coverage and lookup (product.md §12.4): whether a zip code can take a shipment now, without
naming partners; why a create found no partner; a seller's shipments by its own reference."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.assertions import assert_problem
from tests.conftest import count_rows
from tests.factories import account_with_token, api_key_headers
from tests.shipments.factories import create_shipment, make_parties, shipment_body


async def coverage(client: httpx.AsyncClient, headers: dict[str, str], zip_code: str) -> object:
    response = await client.get("/coverage", params={"zip_code": zip_code}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_coverage_says_served_and_available_without_naming_partners(
    client: httpx.AsyncClient,
) -> None:
    parties = await make_parties(client, serviceable_zip_codes=["02139"], max_handling_capacity=1)
    headers = parties.seller_headers

    assert await coverage(client, headers, "02139") == {
        "zip_code": "02139",
        "served": True,
        "available": True,
    }
    await create_shipment(client, headers)  # the partner's one slot
    assert await coverage(client, headers, "02139") == {
        "zip_code": "02139",
        "served": True,
        "available": False,
    }
    # Normalized like a destination's zip code; nobody serves this one.
    assert await coverage(client, headers, " sw1a  1aa ") == {
        "zip_code": "SW1A 1AA",
        "served": False,
        "available": False,
    }


async def test_no_partner_available_says_whether_the_zip_is_unserved_or_full(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    parties = await make_parties(client, serviceable_zip_codes=["02139"], max_handling_capacity=1)
    await create_shipment(client, parties.seller_headers)
    before = await count_rows(db_engine, "shipments")

    full = await client.post("/shipments", json=shipment_body(), headers=parties.seller_headers)
    problem = assert_problem(full, 409, "no_partner_available")
    assert problem["reason"] == "partners_full"
    assert "/coverage" in problem["detail"]
    unserved_body = shipment_body(destination={"zip_code": "99999"})
    unserved = await client.post("/shipments", json=unserved_body, headers=parties.seller_headers)
    problem = assert_problem(unserved, 409, "no_partner_available")
    assert problem["reason"] == "zip_not_served"
    assert "99999" in problem["detail"]
    assert await count_rows(db_engine, "shipments") == before


async def test_coverage_is_for_sellers_and_test_keys_see_their_simulated_partner(
    client: httpx.AsyncClient,
) -> None:
    parties = await make_parties(client)
    test_key = await api_key_headers(
        client, parties.seller_headers, mode="test", scopes=["shipments:read"]
    )

    assert await coverage(client, test_key, "99999") == {
        "zip_code": "99999",
        "served": True,
        "available": True,
    }
    refused = await client.get(
        "/coverage", params={"zip_code": "02139"}, headers=parties.partner_headers
    )
    assert_problem(refused, 403, "wrong_account_kind")
    assert_problem(
        await client.get("/coverage", params={"zip_code": "02139"}), 401, "not_authenticated"
    )
    for bad in ("", "!!", "x" * 30):
        response = await client.get(
            "/coverage", params={"zip_code": bad}, headers=parties.seller_headers
        )
        assert_problem(response, 422, "validation_failed")


async def test_sellers_find_their_shipments_by_their_own_reference(
    client: httpx.AsyncClient,
) -> None:
    parties = await make_parties(client)
    first = await create_shipment(client, parties.seller_headers, reference="ORDER-1")
    second = await create_shipment(client, parties.seller_headers, reference="ORDER-1")
    await create_shipment(client, parties.seller_headers, reference="ORDER-2")
    _, stranger = await account_with_token(client, "seller")

    async def by_reference(headers: dict[str, str], reference: str) -> list[str]:
        response = await client.get(
            "/shipments", params={"reference": reference, "limit": 1}, headers=headers
        )
        assert response.status_code == 200, response.text
        page = response.json()
        ids = [item["id"] for item in page["items"]]
        while page["next_cursor"]:
            response = await client.get(
                "/shipments",
                params={"reference": reference, "limit": 1, "cursor": page["next_cursor"]},
                headers=headers,
            )
            page = response.json()
            ids += [item["id"] for item in page["items"]]
        return ids

    assert await by_reference(parties.seller_headers, "ORDER-1") == [second["id"], first["id"]]
    assert await by_reference(parties.seller_headers, "order-1") == []
    assert await by_reference(stranger, "ORDER-1") == []
    refused = await client.get(
        "/shipments", params={"reference": "ORDER-1"}, headers=parties.partner_headers
    )
    assert_problem(refused, 403, "wrong_account_kind")
