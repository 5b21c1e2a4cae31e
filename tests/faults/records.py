"""What the load saw: every exchange with the app, and every write the app acknowledged.

A write is acknowledged by a 2xx response. A 503 or no response at all leaves its outcome unknown
to the client ("ambiguous"): the failure may have come after the commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

# 4xx answers that are normal under the load, by problem code.
EXPECTED_CONFLICTS = frozenset({"no_partner_available", "invalid_transition"})


def problem_code(response: httpx.Response) -> str | None:
    """The problem+json `code` of an error response, if it is one."""
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return None
    try:
        code = response.json().get("code")
    except ValueError:
        return None
    return code if isinstance(code, str) else None


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and what came back (`status` None: no response, `error` says why)."""

    actor: str
    operation: str
    started: float
    finished: float
    status: int | None
    code: str | None
    error: str | None

    @property
    def elapsed(self) -> float:
        return self.finished - self.started

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def unavailable(self) -> bool:
        return self.status == 503

    def __str__(self) -> str:
        outcome = self.status if self.status is not None else self.error
        return f"{self.actor} {self.operation}: {outcome} {self.code or ''} in {self.elapsed:.2f}s"


@dataclass(slots=True)
class ShipmentLedger:
    # The acknowledged body with the highest version.
    acked: dict[str, Any] | None = None
    # Writes to this shipment whose outcome the client never learned.
    ambiguous: int = 0
    # At most how many versions acknowledged writes added without showing the shipment (a
    # scan's result names its event, not the shipment's version).
    unviewed: int = 0

    def ack(self, body: dict[str, Any]) -> None:
        if self.acked is None or body["version"] > self.acked["version"]:
            self.acked = body


@dataclass(slots=True)
class Ledger:
    """What clients were told happened: every acknowledged write."""

    shipments: dict[str, ShipmentLedger] = field(default_factory=dict)
    # Acknowledged sign-ups: account id -> kind.
    accounts: dict[str, str] = field(default_factory=dict)
    # (kind, Authorization header) of tokens whose logout was acknowledged.
    revoked: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    # Acknowledged scans: scan id -> (shipment id, the sequence of the event it recorded).
    scans: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Scans refused for a reason the load does not expect, by their problem.
    refused_scans: list[str] = field(default_factory=list)

    def shipment(self, shipment_id: str) -> ShipmentLedger:
        return self.shipments.setdefault(shipment_id, ShipmentLedger())


def unexpected_exchanges(exchanges: Iterable[Exchange], deadline_seconds: float) -> list[str]:
    """Every exchange that breaks the contract: a 500 (or any 5xx but 503), no response at all,
    an unexpected 4xx, a revoked token accepted, or an answer slower than the deadline."""
    problems = []
    for exchange in exchanges:
        if exchange.elapsed > deadline_seconds:
            problems.append(f"slower than the {deadline_seconds}s deadline: {exchange}")
        status = exchange.status
        if status is None:
            problems.append(f"no response: {exchange}")
        elif exchange.operation == "me_revoked":
            if status not in (401, 503):
                problems.append(f"revoked token not refused: {exchange}")
        elif exchange.operation == "ready":
            if status not in (200, 503):
                problems.append(f"readiness answered {status}: {exchange}")
        elif status >= 500 and status != 503:
            problems.append(f"server error: {exchange}")
        elif 400 <= status < 500 and not (status == 409 and exchange.code in EXPECTED_CONFLICTS):
            problems.append(f"unexpected client error: {exchange}")
    return problems
