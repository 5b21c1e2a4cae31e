"""Why a delivery attempt failed (product.md §12.1): a closed list, with the plain words public
views and the recipient's emails use. The partner's own note never reaches a public view."""

from __future__ import annotations

import enum


class FailureReason(enum.StrEnum):
    recipient_unavailable = "recipient_unavailable"
    address_not_found = "address_not_found"
    refused = "refused"
    access_restricted = "access_restricted"
    business_closed = "business_closed"
    weather = "weather"
    damaged = "damaged"
    other = "other"


# What happened, as a recipient reads it (no personal data: the partner's note is not shown).
FAILURE_WORDS: dict[FailureReason, str] = {
    FailureReason.recipient_unavailable: "Nobody was available to receive the parcel",
    FailureReason.address_not_found: "The courier could not find the address",
    FailureReason.refused: "The parcel was refused at the door",
    FailureReason.access_restricted: "The courier could not get access to the address",
    FailureReason.business_closed: "The business was closed",
    FailureReason.weather: "The weather made delivery unsafe",
    FailureReason.damaged: "The parcel was damaged and held back for inspection",
    FailureReason.other: "The delivery could not be completed",
}

# Reasons that may send a parcel straight back to its sender: another attempt would not help.
RETURNS_AT_ONCE: frozenset[FailureReason] = frozenset(
    {FailureReason.refused, FailureReason.address_not_found}
)
