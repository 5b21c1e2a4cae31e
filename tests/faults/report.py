"""Figures of each fault, for the people reading the results: with FAULT_REPORT=path set, every
outage a test checks appends one JSON line there (the test, answers by status during and after
the fault, server errors, the slowest answer, and how soon writes succeeded again), and one for
its live-update streams (connections by answer, how the streams ended, events heard)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tests.faults.records import Exchange
from tests.faults.streams import FollowedShipment


def _statuses_of(statuses: Iterable[int | None]) -> dict[str, int]:
    counts = Counter(str(status) if status is not None else "none" for status in statuses)
    return dict(sorted(counts.items()))


def _statuses(exchanges: Iterable[Exchange]) -> dict[str, int]:
    return _statuses_of(e.status for e in exchanges)


def _append(row: dict[str, object]) -> None:
    target = os.environ.get("FAULT_REPORT")
    if target:
        with Path(target).open("a") as report:
            report.write(json.dumps(row) + "\n")


def _test_name() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]


def report_fault(exchanges: list[Exchange], injected: float, up: float, recovered: float) -> None:
    """Append this fault's figures to $FAULT_REPORT, if set."""
    requests = [e for e in exchanges if e.operation != "ready"]
    during = [e for e in requests if injected <= e.started < up]
    after = [e for e in requests if e.started >= up]
    first_success = min((e.finished for e in after if e.succeeded), default=None)
    row = {
        "test": _test_name(),
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
    _append(row)


def report_streams(followed: list[FollowedShipment]) -> None:
    """Append the figures of the load's streams to $FAULT_REPORT, if set."""
    connections = [c for shipment in followed for c in shipment.connections]
    _append(
        {
            "test": _test_name(),
            "streams_followed": len(followed),
            "connections": _statuses_of(c.status for c in connections),
            "endings": dict(sorted(Counter(c.ending for c in connections).items())),
            "events_heard": sum(len(shipment.events) for shipment in followed),
            "reconnects_with_last_event_id": sum(
                max(0, len(shipment.connections) - 1) for shipment in followed
            ),
        }
    )
