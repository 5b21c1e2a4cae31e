"""Webhook test support: a real HTTP receiver, an app that may call it, and small helpers.

The receiver is asyncio.start_server on 127.0.0.1 (a free port), speaking just enough HTTP/1.1
to take one request per connection. It records each request's method, path, headers and raw
body, and answers with a scripted sequence of status codes (then 200 once the script runs out).
It runs on the test's own event loop, so the worker's httpx client reaches it over real TCP.

Loopback is a private address, so deliveries to the receiver need an app (and a worker) with
`webhooks_allow_private=True`; the session `app` keeps the production default.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.main import create_app
from tests.conftest import make_settings, running_client

MAX_HEADER_BYTES = 64 * 1024


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

    def url(self, path: str = "/hooks") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def answer(self, *statuses: int, path: str | None = None) -> None:
        """Answer the next requests (to `path`, or to any path) with these status codes, in
        order; then 200 again."""
        self._scripts.setdefault(path, deque()).extend(statuses)

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
            status = self._next_status(target)
            self.requests.append(ReceivedRequest(method, target, headers, body, status))
            reason = HTTPStatus(status).phrase
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\n"
                "content-length: 2\r\nconnection: close\r\n\r\nok".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    """A receiver listening on 127.0.0.1 for the duration of the block."""
    receiver = Receiver("127.0.0.1", 0)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    receiver.port = int(server.sockets[0].getsockname()[1])
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()


@dataclass(frozen=True, slots=True)
class HooksApp:
    """An app of its own that lets webhook URLs reach loopback, with a running client."""

    app: FastAPI
    client: httpx.AsyncClient

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        sessionmaker: async_sessionmaker[AsyncSession] = self.app.state.sessionmaker
        return sessionmaker


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
    return endpoint
