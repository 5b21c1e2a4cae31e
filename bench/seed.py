"""Seed the benchmark data through the running API: a seller, a partner, shipments with timelines.

Usage: python bench/seed.py BASE_URL OUT_DIR [SHIPMENTS]
Writes into OUT_DIR: token and partner_token (access tokens), api_key (a live key of the seller,
`shipments:read`), ids (the shipments to read, one id
a line, ten events each), tracking_numbers (the same shipments' tracking numbers, for the public
tracking workload), update_ids (shipments for the status-update workload), the request bodies
create_body.json and update_body.json, and the login forms login (the seller), bystander_login
(another seller) and wrong_login (the seller with a wrong password).
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

PASSWORD = "bench-password-123"  # noqa: S105 - a throwaway account in a scratch database
EVENTS_PER_SHIPMENT = 10
# Every status update adds an event, and a timeline holds at most MAX_EVENTS_PER_SHIPMENT (200),
# the last place kept for the final status: 300 shipments leave room for both apps' update runs
# at 2,000 updates a second each.
UPDATE_SHIPMENTS = 300
EXTRA_PARTNERS = 4


def call(http: httpx.Client, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = http.request(method, path, headers=headers, **kw)
    if response.is_error:
        raise SystemExit(f"{method} {path}: {response.status_code} {response.text}")
    return response.json() if response.content else None


def account(http: httpx.Client, kind: str, **profile: Any) -> tuple[str, str]:
    email = f"bench-{kind}-{secrets.token_hex(3)}@example.com"
    body = {"name": f"Bench {kind}", "email": email, "password": PASSWORD, **profile}
    call(http, "POST", f"/{kind}/signup", json=body)
    form = {"username": email, "password": PASSWORD}
    return email, call(http, "POST", f"/{kind}/token", data=form)["access_token"]


def shipment_body(zip_code: str, number: int) -> dict[str, Any]:
    return {
        "content": f"Bench parcel {number}",
        "weight_kg": 1.5,
        "destination": {"zip_code": zip_code, "city": "New York", "address_line": "1 St"},
        "recipient": {"name": "Grace Hopper", "email": "grace@example.com"},
        "tags": ["bench", "books"],
        "reference": f"BENCH-{number}",
    }


def main() -> None:
    base_url, out_dir = sys.argv[1], Path(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    zip_code = f"B{secrets.token_hex(3).upper()}"
    with httpx.Client(base_url=base_url, timeout=30) as http:
        seller_email, seller = account(http, "seller", zip_code="10001")
        bystander_email, _ = account(http, "seller", zip_code="10001")
        partner_profile = {"serviceable_zip_codes": [zip_code], "max_handling_capacity": 10_000}
        _, partner = account(http, "partner", **partner_profile)
        ids, tracking_numbers = [], []
        for number in range(count):
            body = shipment_body(zip_code, number)
            shipment = call(http, "POST", "/shipments", seller, json=body)
            # Creation is event 1; each partner update adds one.
            for hop in range(EVENTS_PER_SHIPMENT - 1):
                update = {"status": "in_transit", "location_zip": zip_code, "note": f"Hub {hop}"}
                shipment = call(http, "PATCH", f"/shipments/{shipment['id']}", partner, json=update)
            if len(shipment["timeline"]) != EVENTS_PER_SHIPMENT:
                raise SystemExit(f"expected {EVENTS_PER_SHIPMENT} events: {shipment['timeline']}")
            ids.append(shipment["id"])
            tracking_numbers.append(shipment["tracking_number"])
        # The status-update workloads scan these (in_transit -> in_transit), apart from the reads
        # so that the timelines read stay at ten events.
        update_ids = []
        for number in range(UPDATE_SHIPMENTS):
            body = shipment_body(zip_code, count + number)
            update_ids.append(call(http, "POST", "/shipments", seller, json=body)["id"])
        # Room for every shipment the create workloads add (capacity is at most 10,000 each),
        # added last so that the shipments above all went to `partner`.
        for _ in range(EXTRA_PARTNERS):
            account(http, "partner", **partner_profile)
        key_body = {"name": "bench", "scopes": ["shipments:read"], "mode": "live"}
        api_key = call(http, "POST", "/seller/api-keys", seller, json=key_body)["secret"]
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "token": seller,
        "api_key": api_key,
        "partner_token": partner,
        "ids": "\n".join(ids) + "\n",
        "tracking_numbers": "\n".join(tracking_numbers) + "\n",
        "update_ids": "\n".join(update_ids) + "\n",
        "create_body.json": json.dumps(shipment_body(zip_code, 0)),
        "update_body.json": json.dumps({"status": "in_transit", "location_zip": zip_code}),
        "login": urlencode({"username": seller_email, "password": PASSWORD}),
        "bystander_login": urlencode({"username": bystander_email, "password": PASSWORD}),
        "wrong_login": urlencode({"username": seller_email, "password": "not-the-password"}),
    }
    for name, content in files.items():
        (out_dir / name).write_text(content)


if __name__ == "__main__":
    main()
