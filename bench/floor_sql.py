"""Print, as JSON, the SQL the API runs to read shipments, for the floor app to run verbatim.

The floor must do the same SQL as the API for the same requests; compiling the API's own
statements (rather than copying their text) keeps the two from drifting apart. Each entry is
the statement in asyncpg's `$n` form and the names of its parameters in order.

Usage: python bench/floor_sql.py > floor_sql.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from sqlalchemy import Select
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from backend.accounts.models import Partner, Seller
from backend.accounts.repository import token_version_query
from backend.shipments.views import one_query, page_query


def compiled(statement: Select[Any]) -> dict[str, Any]:
    sql = statement.compile(dialect=asyncpg_dialect())
    return {"sql": str(sql), "params": list(sql.positiontup or [])}


def main() -> None:
    queries = {
        "token_version": {
            "seller": compiled(token_version_query(Seller)),
            "partner": compiled(token_version_query(Partner)),
        },
        "one": {kind: compiled(one_query(f"{kind}_id")) for kind in ("seller", "partner")},
        "page": {
            kind: compiled(page_query(f"{kind}_id", by_status=False, by_tag=False, after=False))
            for kind in ("seller", "partner")
        },
    }
    sys.stdout.write(json.dumps(queries, indent=2) + "\n")


if __name__ == "__main__":
    main()
