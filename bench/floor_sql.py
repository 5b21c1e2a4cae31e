"""Print, as JSON, the SQL the API runs for the benchmark's requests, for the floor app to run
verbatim.

The floor must do the same SQL as the API for the same requests. Taking the API's own compiled
statements (backend/db.py `Statement`), rather than copying their text, keeps the two from
drifting apart. Each entry is the statement in asyncpg's `$n` form and its parameters in order:
[name, whether the caller gives it, the value written into the statement otherwise]. Most of
these statements are private to their modules; they are read here on purpose.

Usage: python bench/floor_sql.py > floor_sql.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from backend.accounts.models import AccountKind
from backend.accounts.repository import CALLER_STATEMENTS
from backend.db import Statement
from backend.outbox import outbox
from backend.shipments import repository, views
from backend.webhooks import events


def exported(statement: Statement) -> dict[str, Any]:
    return {"sql": statement.sql, "params": [list(parameter) for parameter in statement.parameters]}


def main() -> None:
    kinds = [kind.value for kind in AccountKind]
    statements = {
        "caller": {kind: exported(CALLER_STATEMENTS[AccountKind(kind)]) for kind in kinds},
        "one": {kind: exported(views.ONE[f"{kind}_id"]) for kind in kinds},
        "page": {
            kind: exported(
                views.page_statement(f"{kind}_id", by_status=False, by_tag=False, after=False)
            )
            for kind in kinds
        },
        "claim_partner": exported(repository._CLAIM_PARTNER),
        "partner_with_room": exported(repository._PARTNER_WITH_ROOM_EXISTS),
        "insert_shipment": exported(repository._INSERT_SHIPMENT),
        "append_event": exported(repository._APPEND_EVENT),
        "create_tags": exported(repository._CREATE_TAGS),
        "link_tags": exported(repository._LINK_TAGS),
        "lock_for_partner": exported(repository._LOCK["partner_id"]),
        "save_shipment": exported(repository._SAVE_SHIPMENT),
        "serialize_seller_events": exported(events._SERIALIZE_SELLER_EVENTS),
        "record_event": exported(events._RECORD_EVENT),
        "enabled_endpoints": exported(events._ENABLED_ENDPOINTS),
        "queue_message": exported(outbox._QUEUE),
    }
    sys.stdout.write(json.dumps(statements, indent=2) + "\n")


if __name__ == "__main__":
    main()
