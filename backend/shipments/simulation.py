"""The paths a test shipment can be driven along (product.md §11.2): pure rules, no database.

A scenario is a whole life, placed to final. Advancing a test shipment to a status walks its
scenario's path from where the shipment stands to the first time the path reaches that status;
every step is then an ordinary transition of the status machine (backend/shipments/status.py),
reported by the seller's simulated partner (or, for `cancelled`, by the seller).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from backend.shipments.errors import InvalidTransition
from backend.shipments.failures import FailureReason
from backend.shipments.status import ShipmentStatus

S = ShipmentStatus


class Scenario(enum.StrEnum):
    delivered = "delivered"
    delivered_second_attempt = "delivered_second_attempt"
    returned = "returned"
    cancelled = "cancelled"


@dataclass(frozen=True, slots=True)
class Step:
    status: ShipmentStatus
    # The timeline line, where the status's own would not say what happened.
    note: str | None = None
    # A failed delivery attempt's reason (its words are the timeline line).
    failure_reason: FailureReason | None = None


_FAILED_ATTEMPT = Step(S.in_transit, failure_reason=FailureReason.recipient_unavailable)
PATHS: dict[Scenario, tuple[Step, ...]] = {
    Scenario.delivered: (
        Step(S.placed),
        Step(S.in_transit),
        Step(S.out_for_delivery),
        Step(S.delivered),
    ),
    Scenario.delivered_second_attempt: (
        Step(S.placed),
        Step(S.in_transit),
        Step(S.out_for_delivery),
        _FAILED_ATTEMPT,
        Step(S.out_for_delivery, "Out for delivery again"),
        Step(S.delivered),
    ),
    Scenario.returned: (
        Step(S.placed),
        Step(S.in_transit),
        Step(S.out_for_delivery),
        Step(S.returned, failure_reason=FailureReason.refused),
    ),
    Scenario.cancelled: (Step(S.placed), Step(S.cancelled)),
}
# The scenario that `to` alone implies.
_DEFAULT_SCENARIO = {
    S.in_transit: Scenario.delivered,
    S.out_for_delivery: Scenario.delivered,
    S.delivered: Scenario.delivered,
    S.returned: Scenario.returned,
    S.cancelled: Scenario.cancelled,
}


def reaches(scenario: Scenario, to: ShipmentStatus) -> bool:
    """Whether the scenario's path passes through `to` after its start."""
    return any(step.status is to for step in PATHS[scenario][1:])


def scenario_for(to: ShipmentStatus, scenario: Scenario | None) -> Scenario:
    if scenario is not None:
        return scenario
    return _DEFAULT_SCENARIO[to]


def steps_to(current: ShipmentStatus, to: ShipmentStatus, scenario: Scenario | None) -> list[Step]:
    """The steps from `current` to `to` along the scenario's path (the one `to` implies when
    none is given); 409 `invalid_transition` when that path does not lead there from here."""
    path = PATHS[scenario_for(to, scenario)]
    statuses = [step.status for step in path]
    if current in statuses:
        rest = path[statuses.index(current) + 1 :]
        for position, step in enumerate(rest):
            if step.status is to:
                return list(rest[: position + 1])
    raise InvalidTransition(
        f"A {current.value} test shipment cannot be advanced to {to.value}"
        + (f" along the {scenario.value} scenario" if scenario else "")
        + "; advance it along a scenario that passes through its status.",
        current_status=current.value,
        allowed_next=[],
    )
