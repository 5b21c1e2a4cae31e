"""The shipment status machine: a pure table, testable without a database."""

from __future__ import annotations

import enum


class ShipmentStatus(enum.StrEnum):
    placed = "placed"
    in_transit = "in_transit"
    out_for_delivery = "out_for_delivery"
    delivered = "delivered"
    cancelled = "cancelled"
    returned = "returned"


TERMINAL: frozenset[ShipmentStatus] = frozenset(
    {ShipmentStatus.delivered, ShipmentStatus.cancelled, ShipmentStatus.returned}
)

# What the assigned partner may report next. Cancelling is the seller's, through /cancel.
PARTNER_TRANSITIONS: dict[ShipmentStatus, frozenset[ShipmentStatus]] = {
    ShipmentStatus.placed: frozenset({ShipmentStatus.in_transit}),
    ShipmentStatus.in_transit: frozenset(
        {ShipmentStatus.in_transit, ShipmentStatus.out_for_delivery, ShipmentStatus.returned}
    ),
    ShipmentStatus.out_for_delivery: frozenset(
        {ShipmentStatus.delivered, ShipmentStatus.in_transit, ShipmentStatus.returned}
    ),
    ShipmentStatus.delivered: frozenset(),
    ShipmentStatus.cancelled: frozenset(),
    ShipmentStatus.returned: frozenset(),
}
CANCELLABLE: frozenset[ShipmentStatus] = frozenset({ShipmentStatus.placed})
# While the seller may still correct the recipient and the destination (product.md §12.3).
CORRECTABLE: frozenset[ShipmentStatus] = frozenset(
    {ShipmentStatus.placed, ShipmentStatus.in_transit}
)


def allowed_next(current: ShipmentStatus) -> list[ShipmentStatus]:
    """States a partner may move a shipment to from `current`, in a stable order."""
    return sorted(PARTNER_TRANSITIONS[current], key=list(ShipmentStatus).index)


# The main steps a recipient sees on the progress bar.
PROGRESS_STEPS: tuple[ShipmentStatus, ...] = (
    ShipmentStatus.placed,
    ShipmentStatus.in_transit,
    ShipmentStatus.out_for_delivery,
    ShipmentStatus.delivered,
)

STATUS_MACHINE_DOC = """
**Status machine.** A shipment starts `placed`. The assigned partner reports each step; the
owner may cancel while it is still `placed`:

| from | to |
|---|---|
| `placed` | `in_transit`, `cancelled` (seller, `POST /shipments/{id}/cancel`) |
| `in_transit` | `in_transit` (a scan at a new location), `out_for_delivery`, `returned` |
| `out_for_delivery` | `delivered` (with the code), `in_transit` (a failed attempt), `returned` |
| `delivered`, `cancelled`, `returned` | — (terminal) |

Any other change is `409 invalid_transition`, listing the allowed next states. A failed
attempt carries its `failure_reason`; after MAX_DELIVERY_ATTEMPTS (3) of them a shipment is
`returned` by itself, and `refused` or `address_not_found` may send it there at once.
"""
