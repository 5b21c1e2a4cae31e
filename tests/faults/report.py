"""Figures of each fault, for the people reading the results: with FAULT_REPORT=path set, every
outage a test checks appends one JSON line there (the test, answers by status during and after
the fault, server errors, the slowest answer, and how soon writes succeeded again)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tests.faults.records import Exchange


def _statuses(exchanges: Iterable[Exchange]) -> dict[str, int]:
    counts = Counter(str(e.status) if e.status is not None else "none" for e in exchanges)
    return dict(sorted(counts.items()))


def report_fault(exchanges: list[Exchange], injected: float, up: float, recovered: float) -> None:
    """Append this fault's figures to $FAULT_REPORT, if set."""
    target = os.environ.get("FAULT_REPORT")
    if not target:
        return
    requests = [e for e in exchanges if e.operation != "ready"]
    during = [e for e in requests if injected <= e.started < up]
    after = [e for e in requests if e.started >= up]
    first_success = min((e.finished for e in after if e.succeeded), default=None)
    row = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0],
        "requests": len(requests),
        "during": _statuses(during),
        "after": _statuses(after),
        "server_errors": sum(
            1 for e in requests if e.status is not None and e.status >= 500 and e.status != 503
        ),
        "worst_seconds": round(max((e.elapsed for e in requests), default=0.0), 2),
        "first_2xx_after_seconds": (
            round(first_success - up, 2) if first_success is not None else None
        ),
        "recovered_after_seconds": round(recovered - up, 2),
    }
    with Path(target).open("a") as report:
        report.write(json.dumps(row) + "\n")
