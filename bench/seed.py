"""Seed the benchmark data through the running API: a seller, a partner, shipments with timelines.

Usage: python bench/seed.py BASE_URL OUT_DIR [SHIPMENTS]
Writes OUT_DIR/token (the seller's access token), OUT_DIR/ids (one shipment id a line) and
OUT_DIR/login (the seller's login form body).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

PASSWORD = "bench-password-123"  # noqa: S105 - a throwaway account in a scratch database
EVENTS_PER_SHIPMENT = 10


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


def main() -> None:
    base_url, out_dir = sys.argv[1], Path(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    zip_code = f"B{secrets.token_hex(3).upper()}"
    with httpx.Client(base_url=base_url, timeout=30) as http:
        seller_email, seller = account(http, "seller", zip_code="10001")
        _, partner = account(
            http, "partner", serviceable_zip_codes=[zip_code], max_handling_capacity=count + 10
        )
        ids = []
        for number in range(count):
            body = {
                "content": f"Bench parcel {number}",
                "weight_kg": 1.5,
                "destination": {"zip_code": zip_code, "city": "New York", "address_line": "1 St"},
                "recipient": {"name": "Grace Hopper", "email": "grace@example.com"},
                "tags": ["bench", "books"],
                "reference": f"BENCH-{number}",
            }
            shipment = call(http, "POST", "/shipments", seller, json=body)
            # Creation is event 1; each partner update adds one.
            for hop in range(EVENTS_PER_SHIPMENT - 1):
                update = {"status": "in_transit", "location_zip": zip_code, "note": f"Hub {hop}"}
                shipment = call(http, "PATCH", f"/shipments/{shipment['id']}", partner, json=update)
            if len(shipment["timeline"]) != EVENTS_PER_SHIPMENT:
                raise SystemExit(f"expected {EVENTS_PER_SHIPMENT} events: {shipment['timeline']}")
            ids.append(shipment["id"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "token").write_text(seller)
    (out_dir / "ids").write_text("\n".join(ids) + "\n")
    (out_dir / "login").write_text(urlencode({"username": seller_email, "password": PASSWORD}))


if __name__ == "__main__":
    main()
