"""`include` on a shipment list: the default shape is unchanged, `include=` leaves the
timelines out, anything else is refused."""

from __future__ import annotations

import httpx
import pytest

from tests.assertions import assert_problem
from tests.shipments.factories import create_shipment, make_parties


async def test_pages_without_timelines_page_like_the_full_list(client: httpx.AsyncClient) -> None:
    parties = await make_parties(client, max_handling_capacity=10)
    created = [(await create_shipment(client, parties.seller_headers))["id"] for _ in range(5)]
    headers = parties.seller_headers

    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 2, "include": ""}
    while True:
        page = (await client.get("/shipments", params=params, headers=headers)).json()
        assert all(item["timeline"] is None for item in page["items"])
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        params = {**params, "cursor": page["next_cursor"]}

    assert seen == created[::-1]  # newest first, each once, as without `include`
    default = (await client.get("/shipments", headers=headers)).json()
    assert all(len(item["timeline"]) == 1 for item in default["items"])


@pytest.mark.parametrize("include", ["events", "timeline,", "TIMELINE", "timeline,events", " "])
async def test_an_unknown_part_is_refused(client: httpx.AsyncClient, include: str) -> None:
    parties = await make_parties(client)
    response = await client.get(
        "/shipments", params={"include": include}, headers=parties.seller_headers
    )
    assert_problem(response, 422, "validation_failed")
