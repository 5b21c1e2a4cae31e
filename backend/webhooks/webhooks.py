"""Webhooks per Standard Webhooks: secrets, signatures, the destination guard, and delivery."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.config import Settings
from backend.db import utcnow
from backend.errors import DomainError
from backend.webhooks.models import Event, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks format, not a secret
# Only the status code matters; the rest of an answer is read up to this and then dropped.
MAX_RESPONSE_BYTES = 64 * 1024


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


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The endpoint's secret, then its previous one while a rotation's overlap lasts."""
    secrets_now = [endpoint.secret]
    expires_at = endpoint.previous_secret_expires_at
    if endpoint.previous_secret is not None and expires_at is not None and now < expires_at:
        secrets_now.append(endpoint.previous_secret)
    return secrets_now


def signature_header(
    endpoint: WebhookEndpoint, message_id: str, timestamp: int, body: bytes, now: datetime
) -> str:
    """`webhook-signature`: one signature per secret in use, space-separated (Standard
    Webhooks), so a receiver holding either secret of a rotation accepts the delivery."""
    return " ".join(
        sign(secret, message_id, timestamp, body) for secret in signing_secrets(endpoint, now)
    )


# Address forms that carry an IPv4 address inside an IPv6 one. `is_global` judges the IPv6
# form alone and calls some of these public even when the IPv4 inside is a private one.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a private network's own


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _is_public_unicast(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # `is_global` calls multicast groups public; a webhook goes to one host, never to a group.
    return address.is_global and not address.is_multicast


def is_public_address(text: str) -> bool:
    """True for a unicast address on the public internet, judging an IPv4 address embedded in
    an IPv6 one (IPv4-mapped, IPv4-compatible, NAT64, 6to4) by that IPv4 address."""
    address = ipaddress.ip_address(text)
    if not _is_public_unicast(address):
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    if address in _LOCAL_NAT64:
        return False
    embedded = _embedded_ipv4(address)
    return embedded is None or _is_public_unicast(embedded)


# Resolves a host name and port to IP addresses (as text). Injectable so that tests can stall it.
Resolver = Callable[[str, int], Awaitable[list[str]]]

# The system resolver blocks a thread per lookup. Threads of our own: lookups stalled on a slow
# DNS server then wait for these, never for the event loop's default executor, which others use.
_DNS_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-dns")


async def system_resolver(host: str, port: int) -> list[str]:
    lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    resolved = await asyncio.get_running_loop().run_in_executor(_DNS_THREADS, lookup)
    return [str(address[0]) for *_, address in resolved]


@functools.cache
def dns_server_resolver(address: str, port: int) -> Resolver:
    """Look names up by asking the DNS server at `address`:`port` directly, without threads,
    /etc/hosts or the system's search domains: A and AAAA records, CNAMEs followed."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [address]
    resolver.port = port

    async def resolve(host: str, _port: int) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]  # a literal address needs no lookup
        except ValueError:
            pass
        try:
            answers = await resolver.resolve_name(host)
        except dns.exception.Timeout:
            raise TimeoutError from None
        except dns.exception.DNSException:
            return []  # no such name, no address, or no server answered
        return list(answers.addresses())

    return resolve


def resolver_for(settings: Settings) -> Resolver:
    """How webhook hosts are looked up: the DNS server of `WEBHOOK_DNS_SERVER`, or the system's."""
    server = settings.webhook_dns_server_address
    return system_resolver if server is None else dns_server_resolver(*server)


@dataclass(frozen=True, slots=True)
class Destination:
    """A webhook URL that passed the check, and the addresses it resolved to."""

    url: str
    # Deliveries connect to these and nowhere else: a second lookup could answer differently
    # (DNS rebinding).
    addresses: tuple[str, ...]


async def check_destination(
    url: str, *, allow_private: bool, resolve: Resolver, lookup_seconds: float
) -> Destination:
    """Refuse URLs that would make us call into our own network (SSRF).

    The host is resolved within `lookup_seconds`: a slow DNS server makes the URL unusable, it
    never holds up the caller for longer.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeWebhookUrl("Webhook URLs must be absolute http:// or https:// URLs.")
    if parts.username or parts.password:
        raise UnsafeWebhookUrl("Webhook URLs must not carry credentials.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        async with asyncio.timeout(lookup_seconds):
            addresses = tuple(await resolve(parts.hostname, port))
    except TimeoutError:
        raise UnsafeWebhookUrl(f"The host {parts.hostname!r} does not resolve in time.") from None
    except (OSError, ValueError, UnicodeError):
        addresses = ()
    if not addresses:
        raise UnsafeWebhookUrl(f"The host {parts.hostname!r} does not resolve.")
    if not allow_private and not all(is_public_address(address) for address in addresses):
        raise UnsafeWebhookUrl()
    return Destination(url, addresses)


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: all that logs may show of a receiver's URL, whose path and
    query can carry the receiver's API keys."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


# What the delivery log says when no connection was made, whatever the reason: refused, timed
# out, unreachable, TLS refused. Telling them apart would make webhooks a port scanner.
CONNECTION_FAILED = "Connection failed."
CONNECTION_BROKEN = "The connection broke before a complete HTTP answer."
RECEIVER_STALLED = "The receiver stopped sending its answer."


class ConnectionWatch:
    """Notes whether a TCP connection was made (httpcore's trace events), so that an attempt's
    deadline running out says "connection failed" while still connecting."""

    def __init__(self) -> None:
        self.connected = False

    async def trace(self, event_name: str, _info: dict[str, Any]) -> None:
        if event_name == "connection.connect_tcp.complete":
            self.connected = True


def _milliseconds_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


async def _read_at_most(response: httpx.Response, limit: int) -> None:
    """Read the body as sent (no decompression) until it ends or `limit` bytes have come."""
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received >= limit:
            return  # the caller closes the response, and with it the connection


def event_body(event: Event) -> bytes:
    payload = {
        "type": event.type,
        "timestamp": event.created_at.isoformat(),
        "livemode": event.livemode,
        "data": event.data,
    }
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
        resolve: Resolver,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._http = http
        self._resolve = resolve

    async def deliver(self, endpoint_id: uuid.UUID, event_id: uuid.UUID, attempt: int) -> None:
        async with self._sessionmaker() as session:
            endpoint = await session.get(WebhookEndpoint, endpoint_id)
            event = await session.get(Event, event_id)
        if endpoint is None or event is None or not endpoint.enabled:
            return  # deleted or disabled since: nothing left to deliver
        outcome = await self._post(endpoint, event)
        logger.info(
            "webhook %s attempt %d to %s: %s",
            event.id,
            attempt,
            origin(endpoint.url),
            outcome.error or f"HTTP {outcome.status_code}",
        )
        if not await self._record(endpoint, event, attempt, outcome):
            return  # deleted while the attempt was in flight: nothing left to deliver
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
            "webhook-signature": signature_header(
                endpoint, str(event.id), timestamp, body, utcnow()
            ),
        }
        deadline = self._settings.webhook_timeout_seconds
        started = time.perf_counter()
        watch = ConnectionWatch()
        try:
            # One deadline for the whole attempt: httpx's timeouts apply to each read, so a
            # receiver trickling a byte at a time would otherwise hold the attempt for ever.
            async with asyncio.timeout(deadline):
                # Checked again at send time: the name may resolve elsewhere than at registration.
                destination = await check_destination(
                    endpoint.url,
                    allow_private=self._settings.webhooks_allow_private,
                    resolve=self._resolve,
                    lookup_seconds=self._settings.webhook_dns_timeout_seconds,
                )
                status_code = await self._send(destination, body, headers, watch)
        except TimeoutError:
            stalled = f"No complete answer within {deadline:g} s."
            error = stalled if watch.connected else CONNECTION_FAILED
        except UnsafeWebhookUrl as refused:
            error = f"Destination not allowed: {refused.detail}"
        except httpx.HTTPError as failure:
            error = _delivery_error(failure)
        else:
            succeeded = 200 <= status_code < 300
            return Outcome(succeeded, status_code, None, _milliseconds_since(started))
        return Outcome(False, None, error, _milliseconds_since(started))

    async def _send(
        self,
        destination: Destination,
        body: bytes,
        headers: dict[str, str],
        watch: ConnectionWatch,
    ) -> int:
        """POST the body to the first checked address that takes the connection; returns the
        status code, having read at most MAX_RESPONSE_BYTES of the answer."""
        *others, last = destination.addresses
        for address in others:
            with contextlib.suppress(httpx.ConnectError):
                return await self._send_to(address, destination.url, body, headers, watch)
        return await self._send_to(last, destination.url, body, headers, watch)

    async def _send_to(
        self,
        address: str,
        url: str,
        body: bytes,
        headers: dict[str, str],
        watch: ConnectionWatch,
    ) -> int:
        target = httpx.URL(url)
        # Connected to `address`, the receiver still sees its own name: in the Host header and,
        # over TLS, in SNI and the certificate check.
        headers = {**headers, "host": target.netloc.decode("ascii")}
        extensions: dict[str, Any] = {"trace": watch.trace}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.raw_host.decode("ascii")
        request = self._http.build_request(
            "POST",
            target.copy_with(host=address),
            content=body,
            headers=headers,
            extensions=extensions,
        )
        response = await self._http.send(request, stream=True)
        try:
            await _read_at_most(response, MAX_RESPONSE_BYTES)
        finally:
            await response.aclose()
        return response.status_code

    async def _record(
        self, endpoint: WebhookEndpoint, event: Event, attempt: int, outcome: Outcome
    ) -> bool:
        """Log the attempt and follow the endpoint's run of failures. False when the endpoint
        or the event was deleted during the attempt: there is nothing to log it against then."""
        disable_after = timedelta(seconds=self._settings.webhook_disable_after_seconds)
        async with self._sessionmaker() as session, session.begin():
            # Both locked before the log row is added: a deletion racing this either waits, then
            # takes the row with it, or is done, and the insert would break a foreign key.
            current = await session.get(WebhookEndpoint, endpoint.id, with_for_update=True)
            logged_event = await session.get(Event, event.id, with_for_update={"key_share": True})
            if current is None or logged_event is None:
                return False
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
        return True


def _delivery_error(failure: httpx.HTTPError) -> str:
    """The delivery log's text for a failed request: fixed wording, since httpx's own messages
    may name the address connected to and tell a refused port from a filtered one."""
    if isinstance(failure, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return CONNECTION_FAILED
    if isinstance(failure, httpx.TimeoutException):
        return RECEIVER_STALLED
    return CONNECTION_BROKEN
