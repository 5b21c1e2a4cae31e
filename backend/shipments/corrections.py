"""A seller's corrections of a shipment's delivery details (product.md §12.3): which columns
a correction changes, and what the seller's feed says about it. Pure rules: no database."""

from __future__ import annotations

from typing import Any

from backend.shipments.models import Shipment
from backend.shipments.schemas import DeliveryDetailsUpdate, ShipmentRead

# The public line of a correction: what changed stays between the seller and the recipient.
CORRECTION_DESCRIPTION = "Delivery details updated"
# The shipment's columns a correction may set, by the body's part and field.
CORRECTABLE_COLUMNS = {
    ("recipient", "name"): "recipient_name",
    ("recipient", "email"): "recipient_email",
    ("recipient", "phone"): "recipient_phone",
    ("destination", "zip_code"): "destination_zip",
    ("destination", "address_line"): "destination_address_line",
    ("destination", "city"): "destination_city",
}


def corrected_fields(shipment: Shipment, correction: DeliveryDetailsUpdate) -> dict[str, Any]:
    """The shipment's columns the correction changes, with their new values."""
    changed: dict[str, Any] = {}
    for (part_name, field), column in CORRECTABLE_COLUMNS.items():
        part = getattr(correction, part_name)
        if part is None or field not in part.model_fields_set:
            continue
        value = getattr(part, field)
        if value != getattr(shipment, column):
            changed[column] = value
    return changed


def correction_changes(
    view: ShipmentRead, changed: dict[str, Any], *, reassigned: bool
) -> dict[str, Any]:
    """A correction's `changes` for the seller's feed and webhooks: the corrected parts as
    they are now, and the partner when the new zip code moved the shipment to another."""
    changes: dict[str, Any] = {}
    if any(column.startswith("recipient_") for column in changed):
        changes["recipient"] = view.recipient.model_dump(mode="json")
    if any(column.startswith("destination_") for column in changed):
        changes["destination"] = view.destination.model_dump(mode="json")
    if reassigned:
        changes["partner"] = view.partner.model_dump(mode="json")
    return changes
