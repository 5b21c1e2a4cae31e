"""The shipments' long-lived services, built once by the lifespan (backend/main.py) and read from
the application context (`context.part(ShipmentTools)`) by the shipment dependencies and the
live-update routes."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from backend.context import started_context
from backend.shipments.delivery_codes import DeliveryCodes
from backend.shipments.limits import ShipmentLimits
from backend.shipments.stream_hub import StreamHub


@dataclass(frozen=True, slots=True)
class ShipmentTools:
    delivery_codes: DeliveryCodes
    limits: ShipmentLimits
    # The process's one live-update subscription, and the pool that announces new events.
    stream_hub: StreamHub


def shut_down_streams(app: FastAPI) -> None:
    """What a server calls when shutdown starts: end the app's streams with a retry hint, so
    only real requests are left for the graceful period. Safe before startup and twice."""
    context = started_context(app)
    if context is not None:
        context.part(ShipmentTools).stream_hub.shut_down()
