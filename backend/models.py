"""Every table model, imported in one place so the metadata is complete for Alembic."""

from backend.accounts.api_keys.models import ApiKey
from backend.accounts.models import Partner, Seller
from backend.db import metadata
from backend.outbox.models import OutboxMessage, RecordedEmail
from backend.shipments.models import (
    IdempotencyRecord,
    Review,
    Shipment,
    ShipmentEvent,
    ShipmentTag,
    Tag,
)
from backend.webhooks.models import Event, WebhookDelivery, WebhookEndpoint

__all__ = [
    "ApiKey",
    "Event",
    "IdempotencyRecord",
    "OutboxMessage",
    "Partner",
    "RecordedEmail",
    "Review",
    "Seller",
    "Shipment",
    "ShipmentEvent",
    "ShipmentTag",
    "Tag",
    "WebhookDelivery",
    "WebhookEndpoint",
    "metadata",
]
