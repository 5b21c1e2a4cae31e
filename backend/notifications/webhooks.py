"""Webhooks per Standard Webhooks: secrets, signatures, the destination guard, and delivery."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.db import utcnow
from backend.errors import DomainError
from backend.notifications.models import Event, WebhookDelivery, WebhookEndpoint

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks format, not a secret
RECEIVER_TIMEOUT_SECONDS = 10.0


# Delays between webhook attempts (the Standard Webhooks schedule): 8 attempts over ~28 hours,
# longer than the day after which a failing endpoint is disabled.
WEBHOOK_RETRY_DELAYS = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)


def webhook_retry_plan(attempts: int) -> tuple[int, float]:
    """(the attempt cap, the delay after attempt number `attempts`), with ±10 % jitter."""
    index = min(attempts, len(WEBHOOK_RETRY_DELAYS)) - 1
    delay = WEBHOOK_RETRY_DELAYS[index] * random.uniform(0.9, 1.1)  # noqa: S311 - jitter
    return len(WEBHOOK_RETRY_DELAYS) + 1, delay


class UnsafeWebhookUrl(DomainError):
    status_code = 422
    code = "unsafe_webhook_url"
    title = "Webhook URL not allowed"
    default_detail = (
        "Webhook URLs must be http(s) and resolve only to public addresses, never to private, "
        "loopback or link-local ones."
    )


class WebhookDeliveryFailed(Exception):
    pass


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


async def check_destination(url: str, *, allow_private: bool) -> None:
    """Refuse URLs that would make us call into our own network (SSRF)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeWebhookUrl("Webhook URLs must be absolute http:// or https:// URLs.")
    if parts.username or parts.password:
        raise UnsafeWebhookUrl("Webhook URLs must not carry credentials.")
    if allow_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        resolved = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM
        )
    except (OSError, ValueError):
        raise UnsafeWebhookUrl(f"The host {parts.hostname!r} does not resolve.") from None
    for *_, address in resolved:
        if not ipaddress.ip_address(address[0]).is_global:
            raise UnsafeWebhookUrl()


def event_body(event: Event) -> bytes:
    payload = {"type": event.type, "timestamp": event.created_at.isoformat(), "data": event.data}
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Outcome:
    succeeded: bool
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookDispatcher:
    """Sends one event to one endpoint and records the attempt, whatever happens."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        http: httpx.AsyncClient,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._http = http

    async def deliver(self, endpoint_id: uuid.UUID, event_id: uuid.UUID, attempt: int) -> None:
        async with self._sessionmaker() as session:
            endpoint = await session.get(WebhookEndpoint, endpoint_id)
            event = await session.get(Event, event_id)
        if endpoint is None or event is None or not endpoint.enabled:
            return  # deleted or disabled since: nothing left to deliver
        outcome = await self._post(endpoint, event)
        await self._record(endpoint, event, attempt, outcome)
        if not outcome.succeeded:
            raise WebhookDeliveryFailed(outcome.error or f"HTTP {outcome.status_code}")

    async def _post(self, endpoint: WebhookEndpoint, event: Event) -> Outcome:
        body = event_body(event)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "Shiptrack-Webhooks/1",
            "webhook-id": str(event.id),
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(endpoint.secret, str(event.id), timestamp, body),
        }
        started = time.perf_counter()
        try:
            # Checked again at send time: the name may resolve elsewhere than at registration.
            await check_destination(
                endpoint.url, allow_private=self._settings.webhooks_allow_private
            )
            response = await self._http.post(
                endpoint.url, content=body, headers=headers, timeout=RECEIVER_TIMEOUT_SECONDS
            )
        except (httpx.HTTPError, UnsafeWebhookUrl) as error:
            elapsed = int((time.perf_counter() - started) * 1000)
            return Outcome(False, None, f"{type(error).__name__}: {error}"[:500], elapsed)
        elapsed = int((time.perf_counter() - started) * 1000)
        return Outcome(response.is_success, response.status_code, None, elapsed)

    async def _record(
        self, endpoint: WebhookEndpoint, event: Event, attempt: int, outcome: Outcome
    ) -> None:
        disable_after = timedelta(seconds=self._settings.webhook_disable_after_seconds)
        async with self._sessionmaker() as session, session.begin():
            session.add(
                WebhookDelivery(
                    endpoint_id=endpoint.id,
                    event_id=event.id,
                    event_type=event.type,
                    attempt=attempt,
                    succeeded=outcome.succeeded,
                    status_code=outcome.status_code,
                    error=outcome.error,
                    duration_ms=outcome.duration_ms,
                )
            )
            current = await session.get(WebhookEndpoint, endpoint.id, with_for_update=True)
            if current is None:
                return
            if outcome.succeeded:
                current.failing_since = None
            elif current.failing_since is None:
                current.failing_since = utcnow()
            elif utcnow() - current.failing_since >= disable_after:
                current.enabled = False
                current.disabled_reason = (
                    f"Disabled after failing since {current.failing_since.isoformat()}; "
                    f"last error: {outcome.error or f'HTTP {outcome.status_code}'}"
                )[:500]
