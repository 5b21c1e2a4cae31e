"""Webhook test support: a real HTTP receiver, an app that may call it, and small helpers.

The receiver is asyncio.start_server on 127.0.0.1 (a free port), speaking just enough HTTP/1.1
to take one request per connection. It records each request's method, path, headers and raw
body, and answers with a scripted sequence of status codes (then 200 once the script runs out).
Some paths can be made hostile instead: answering a byte at a time for ever, answering after a
delay, or answering 200 with a body of many megabytes; or held, answering only when the test
releases them. It runs on the test's own event loop, so
the worker's httpx client reaches it over real TCP.

Loopback is a private address, so deliveries to the receiver need an app (and a worker) with
`webhooks_allow_private=True`; the session `app` keeps the production default.

Every request a receiver takes is checked with the Standard Webhooks reference library
(`standardwebhooks`) against the secrets `register_endpoint` was given for its port and path;
a receiver that took a request no such secret verifies fails the test when its block ends.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook, WebhookVerificationError

from backend.context import app_context
from backend.main import create_app
from tests.conftest import make_settings, running_client

MAX_HEADER_BYTES = 64 * 1024
CHUNK = b"\0" * (64 * 1024)
# A trickling answer gives up after this long, so that a forgotten one cannot outlive its test.
TRICKLE_LIMIT_SECONDS = 60.0


def signature_verifies(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """True when the Standard Webhooks reference library accepts the request for `secret`."""
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except WebhookVerificationError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    method: str
    path: str
    # Lower-cased names; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes
    # The status code the receiver answered with.
    answered: int

    def json(self) -> dict[str, Any]:
        payload = json.loads(self.body)
        assert isinstance(payload, dict)
        return payload


@dataclass
class Receiver:
    host: str
    port: int
    requests: list[ReceivedRequest] = field(default_factory=list)
    # Status codes to answer with, per path; the key None serves any path without a script.
    _scripts: dict[str | None, deque[int]] = field(default_factory=dict)
    # Hostile paths: seconds between the bytes of a never-ending answer; seconds before
    # answering; the size of a 200 answer's body.
    _trickles: dict[str, float] = field(default_factory=dict)
    _delays: dict[str, float] = field(default_factory=dict)
    _huge: dict[str, int] = field(default_factory=dict)
    # Paths whose answers wait until the test releases them.
    _held: dict[str, asyncio.Event] = field(default_factory=dict)
    _arrivals: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Per path: connections being answered now, the most at once, and body bytes written.
    in_flight: Counter[str] = field(default_factory=Counter)
    most_in_flight: Counter[str] = field(default_factory=Counter)
    body_bytes_sent: Counter[str] = field(default_factory=Counter)
    # Per path, the secrets of the endpoints registered for it; and the requests that none of
    # their path's secrets verified, with the reason.
    secrets: dict[str, list[str]] = field(default_factory=dict)
    badly_signed: list[tuple[ReceivedRequest, str]] = field(default_factory=list)

    def url(self, path: str = "/hooks") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def answer(self, *statuses: int, path: str | None = None) -> None:
        """Answer the next requests (to `path`, or to any path) with these status codes, in
        order; then 200 again."""
        self._scripts.setdefault(path, deque()).extend(statuses)

    def trickle(self, path: str, *, every: float = 0.2) -> None:
        """Answer requests to `path` one byte every `every` seconds, without ever finishing."""
        self._trickles[path] = every

    def delay(self, path: str, seconds: float) -> None:
        """Answer requests to `path` (with 200) only after `seconds`."""
        self._delays[path] = seconds

    def huge(self, path: str, size: int) -> None:
        """Answer requests to `path` with 200 and a body of `size` bytes, written as fast as
        the client reads it."""
        self._huge[path] = size

    def hold(self, path: str) -> None:
        """Keep requests to `path` waiting for their answer until `release(path)`."""
        self._held[path] = asyncio.Event()

    def release(self, path: str) -> None:
        self._held[path].set()

    async def wait_for_request(self, path: str, count: int = 1) -> None:
        """Until `count` requests to `path` have arrived (their answers may still be pending)."""
        async with asyncio.timeout(10), self._arrivals:  # a guard against hanging
            await self._arrivals.wait_for(lambda: len(self.received_at(path)) >= count)

    def _next_status(self, path: str) -> int:
        for key in (path, None):
            script = self._scripts.get(key)
            if script:
                return script.popleft()
        return 200

    def received_at(self, path: str) -> list[ReceivedRequest]:
        return [request for request in self.requests if request.path == path]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEADER_BYTES:
                return
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _version = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            for line in header_lines:
                if not line:
                    continue
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            hostile = target in self._trickles or target in self._huge or target in self._delays
            status = 200 if hostile else self._next_status(target)
            request = ReceivedRequest(method, target, headers, body, status)
            self.requests.append(request)
            self._check_signature(request)
            async with self._arrivals:
                self._arrivals.notify_all()
            self.in_flight[target] += 1
            self.most_in_flight[target] = max(self.most_in_flight[target], self.in_flight[target])
            try:
                await self._answer(target, status, reader, writer)
            finally:
                self.in_flight[target] -= 1
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            TimeoutError,  # a trickle that reached its limit
        ):
            return
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    def _check_signature(self, request: ReceivedRequest) -> None:
        secrets = self.secrets.get(request.path, [])
        body, headers = request.body, request.headers
        if not secrets:
            self.badly_signed.append((request, "no endpoint registered for this path"))
        elif not any(signature_verifies(secret, headers, body) for secret in secrets):
            self.badly_signed.append((request, "no endpoint secret verifies the signature"))

    def assert_every_request_signed(self) -> None:
        assert not self.badly_signed, [(r.path, r.headers, why) for r, why in self.badly_signed]

    async def _answer(
        self, path: str, status: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if path in self._trickles:
            await self._answer_byte_by_byte(writer, self._trickles[path])
            return
        if path in self._held:
            await self._held[path].wait()
        if path in self._delays and await _hung_up_within(reader, self._delays[path]):
            return
        size = self._huge.get(path, 2)
        writer.write(
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: text/plain\r\n"
            f"content-length: {size}\r\nconnection: close\r\n\r\n".encode()
        )
        if path not in self._huge:
            writer.write(b"ok")
            await writer.drain()
            return
        sent = 0
        while sent < size:
            chunk = CHUNK[: size - sent]
            writer.write(chunk)
            await writer.drain()  # raises once the client has hung up
            sent += len(chunk)
            self.body_bytes_sent[path] += len(chunk)

    async def _answer_byte_by_byte(self, writer: asyncio.StreamWriter, every: float) -> None:
        """A status line, then one endless header, a byte at a time: each read gets a byte
        well within any per-read timeout, and the answer never completes."""
        answer = itertools.chain(b"HTTP/1.1 200 OK\r\nx-slow: ", itertools.repeat(ord("a")))
        async with asyncio.timeout(TRICKLE_LIMIT_SECONDS):
            for byte in answer:
                writer.write(bytes([byte]))
                await writer.drain()
                if writer.is_closing():
                    return
                await asyncio.sleep(every)


async def _hung_up_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Wait `seconds` for the client to hang up (it sends nothing more after its request)."""
    try:
        await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return False
    return True


# The receivers listening now, by port: register_endpoint hands each the secret of an endpoint
# whose URL names its port (whatever the host name).
_LISTENING: dict[int, Receiver] = {}


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    """A receiver listening on 127.0.0.1 for the duration of the block; when the block ends
    without an error, every request it took must have verified (see the module docstring)."""
    receiver = Receiver("127.0.0.1", 0)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    receiver.port = int(server.sockets[0].getsockname()[1])
    _LISTENING[receiver.port] = receiver
    try:
        yield receiver
    finally:
        del _LISTENING[receiver.port]
        server.close()
        await server.wait_closed()
    receiver.assert_every_request_signed()


@dataclass(frozen=True, slots=True)
class HooksApp:
    """An app of its own that lets webhook URLs reach loopback, with a running client."""

    app: FastAPI
    client: httpx.AsyncClient

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return app_context(self.app).sessionmaker


@asynccontextmanager
async def running_hooks_app(
    database_url: str, redis_url: str, **overrides: object
) -> AsyncIterator[HooksApp]:
    settings = make_settings(database_url, redis_url, webhooks_allow_private=True, **overrides)
    application = create_app(settings)
    async with running_client(application) as http:
        yield HooksApp(application, http)


async def register_endpoint(
    client: httpx.AsyncClient, headers: dict[str, str], url: str, **extra: Any
) -> dict[str, Any]:
    """POST /seller/webhooks (asserting 201); returns the body, secret included."""
    response = await client.post("/seller/webhooks", json={"url": url, **extra}, headers=headers)
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    parts = urlsplit(url)
    receiver = _LISTENING.get(parts.port) if parts.port is not None else None
    if receiver is not None:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        receiver.secrets.setdefault(target, []).append(endpoint["secret"])
    return endpoint
