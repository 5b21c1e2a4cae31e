"""Check that the API and the floor answer the benchmark's requests with the same JSON.

Usage: python bench/same_json.py API_URL FLOOR_URL WORK_DIR (the files seed.py wrote)

Reads (one shipment, a page of 20, public tracking) must be equal once keys are sorted. Writes
cannot be (new ids, times, tracking numbers), so each app's create and status-update responses
are compared with the same shipment read afterwards through the other app. A few refusals are
compared by status. Exits 1, with a diff, at the first difference.
"""

from __future__ import annotations

import difflib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx


def _same(what: str, first: Any, second: Any, names: tuple[str, str]) -> None:
    left = json.dumps(first, indent=2, sort_keys=True).splitlines()
    right = json.dumps(second, indent=2, sort_keys=True).splitlines()
    if left != right:
        diff = "\n".join(difflib.unified_diff(left, right, *names, lineterm=""))
        raise SystemExit(f"{what}: the responses differ\n{diff}")


def _answer(client: httpx.Client, method: str, path: str, status: int, **kw: Any) -> Any:
    response = client.request(method, path, **kw)
    if response.status_code != status:
        raise SystemExit(
            f"{client.base_url} {method} {path}: {response.status_code}, expected {status}: "
            f"{response.text[:500]}"
        )
    return response.json()


def main() -> None:
    api_url, floor_url, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    seller = {"Authorization": f"Bearer {(work / 'token').read_text().strip()}"}
    partner = {"Authorization": f"Bearer {(work / 'partner_token').read_text().strip()}"}
    read_id = (work / "ids").read_text().split()[0]
    number = (work / "tracking_numbers").read_text().split()[0]
    update_ids = (work / "update_ids").read_text().split()
    create_body = json.loads((work / "create_body.json").read_text())
    update_body = json.loads((work / "update_body.json").read_text())
    names = ("api", "floor")
    with httpx.Client(base_url=api_url) as api, httpx.Client(base_url=floor_url) as floor:
        for what, path, headers in [
            ("GET one", f"/shipments/{read_id}", seller),
            ("GET a page of 20", "/shipments?limit=20", seller),
            ("GET public tracking", f"/track/{number}", {}),
        ]:
            _same(
                what,
                _answer(api, "GET", path, 200, headers=headers),
                _answer(floor, "GET", path, 200, headers=headers),
                names,
            )
        # Each app's writes, read back through the other.
        apps = {"api": api, "floor": floor}
        for (writer, client), update_id in zip(apps.items(), update_ids, strict=False):
            reader = floor if writer == "api" else api
            created = _answer(client, "POST", "/shipments", 201, headers=seller, json=create_body)
            shown = _answer(reader, "GET", f"/shipments/{created['id']}", 200, headers=seller)
            _same(f"POST by the {writer}, read back", created, shown, (writer, "read back"))
            path = f"/shipments/{update_id}"
            updated = _answer(client, "PATCH", path, 200, headers=partner, json=update_body)
            shown = _answer(reader, "GET", path, 200, headers=seller)
            _same(f"PATCH by the {writer}, read back", updated, shown, (writer, "read back"))
        for client in apps.values():
            _answer(client, "GET", f"/shipments/{uuid.uuid4()}", 404, headers=seller)
            _answer(client, "GET", f"/shipments/{read_id}", 401, headers={"Authorization": "x"})
            _answer(client, "GET", "/track/NOSUCHNUMBER", 404)
    sys.stdout.write(
        "same JSON from both apps: GET one, a page, public tracking; each app's POST and "
        "PATCH read back through the other\n"
    )


if __name__ == "__main__":
    main()
