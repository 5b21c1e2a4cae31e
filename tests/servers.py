"""An app served by a real uvicorn on loopback, on the test's own event loop.

For what the in-process ASGI client cannot show: browsers and event streams over TCP, several
replicas sharing Redis, the HTTP server's own limits, faults under load.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from backend.shipments.tools import shut_down_streams

# A guard against hanging, never a measurement.
START_SECONDS = 10.0
STOP_SECONDS = 10.0


@asynccontextmanager
async def serving(app: FastAPI, *, graceful_seconds: int = 5) -> AsyncIterator[str]:
    """`app` served by uvicorn on a free 127.0.0.1 port; yields its base URL.

    uvicorn runs the app's lifespan. On exit it shuts down as on SIGTERM, waiting at most
    `graceful_seconds` for open requests and streams.
    """
    async with serving_built(lambda _base_url: app, graceful_seconds=graceful_seconds) as url:
        yield url


@asynccontextmanager
async def serving_built(
    build: Callable[[str], FastAPI], *, graceful_seconds: int = 5
) -> AsyncIterator[str]:
    """As `serving`, for an app that must know where it is served (its PUBLIC_BASE_URL, which
    the API reference names as its server): `build` gets the base URL and returns the app."""
    # Bound before uvicorn starts, so no other process can take the port in between. An explicit
    # IPPROTO_TCP makes asyncio set TCP_NODELAY on accepted connections, as it does when uvicorn
    # binds the socket itself (without it every keep-alive request waits for a delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    base_url = f"http://127.0.0.1:{port}"
    app = build(base_url)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=graceful_seconds,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        # uvicorn offers no "started" event to await, only a flag.
        async with asyncio.timeout(START_SECONDS):
            while not server.started:
                assert not task.done(), "the server stopped before it started"
                await asyncio.sleep(0.01)
        yield base_url
    finally:
        # As `shiptrack serve` does on SIGTERM (backend/cli.py): streams end first, at once.
        shut_down_streams(app)
        server.should_exit = True
        async with asyncio.timeout(STOP_SECONDS + graceful_seconds):
            await task
        sock.close()
