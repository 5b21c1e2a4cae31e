"""Slow clients (slowloris) against `shiptrack serve` itself, in a process of its own on loopback.

A thousand connections trickle header lines and never end the header block. The server must keep
serving everyone else, and what it holds for them must stay bounded, however much they send.
(How long they may take is the proxy's to bound: deploy/nginx.conf, docs/deploy.md §7.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.factories import account_with_token
from tests.faults.servers import free_tcp_port

SLOW_CLIENTS = 1_000
# Each slow client sends this much in header lines, reconnecting when the server cuts it off.
# Held whole, that would be 128 MiB, about what the original attack pinned.
BYTES_PER_CLIENT = 128 * 1024
LINE_BYTES = 4 * 1024
LINE_INTERVAL_SECONDS = 0.1
# What the server may grow by while under attack: under half of what the clients sent.
MAX_GROWTH_BYTES = SLOW_CLIENTS * BYTES_PER_CLIENT // 2
# Hang guards, never measurements.
START_SECONDS = 30.0
REQUEST_SECONDS = 10.0
ATTACK_SECONDS = 60.0


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@contextlib.contextmanager
def shiptrack_serve(
    database_url: str, redis_url: str, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """`shiptrack serve` (backend.cli.serve, uvicorn configured by `server_config`)."""
    environment = {
        **os.environ,
        "ENVIRONMENT": "test",
        "PARTNER_APPROVAL": "auto",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "WARNING",
        "GRACEFUL_SHUTDOWN_SECONDS": "2",
    }
    command = [sys.executable, "-c", "from backend.cli import main; main()"]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=START_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_until_live(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_SECONDS
    async with httpx.AsyncClient(base_url=base_url, timeout=1.0) as http:
        while True:
            assert process.poll() is None, "shiptrack serve exited"
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/health/live")).status_code == 200:
                    return
            assert time.monotonic() < deadline, "shiptrack serve did not start"
            await asyncio.sleep(0.1)


class SlowClient:
    """Opens a connection, sends a request line, then a header line now and then, forever."""

    def __init__(self, port: int, number: int) -> None:
        self.port = port
        self.number = number
        self.sent = 0
        self.cut_off = 0  # connections the server closed on it

    async def run(self, stop: asyncio.Event) -> None:
        while self.sent < BYTES_PER_CLIENT and not stop.is_set():
            try:
                await self._one_connection(stop)
            except (ConnectionError, OSError):
                self.cut_off += 1
        await stop.wait()  # budget spent: stay quiet until the test ends

    async def _one_connection(self, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        # Whatever the server answers (a 400 for an oversized block), until it closes.
        answer = asyncio.create_task(reader.read())
        try:
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            line = 0
            while self.sent < BYTES_PER_CLIENT and not stop.is_set():
                name = b"X-Slow-%d-%d: " % (self.number, line)
                writer.write(name + b"a" * (LINE_BYTES - len(name) - 2) + b"\r\n")
                await writer.drain()
                self.sent += LINE_BYTES
                line += 1
                await asyncio.sleep(LINE_INTERVAL_SECONDS)
                if answer.done():
                    raise ConnectionResetError("closed by the server")
            # The header block never ends: hold the connection open.
            await stop.wait()
        finally:
            answer.cancel()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def test_a_thousand_slow_clients_neither_block_others_nor_grow_memory(
    database_url: str, redis_url: str
) -> None:
    port = free_tcp_port()
    base_url = f"http://127.0.0.1:{port}"
    with shiptrack_serve(database_url, redis_url, port) as server:
        await wait_until_live(base_url, server)
        async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_SECONDS) as http:
            _, headers = await account_with_token(http, "seller")
            # Warm: the first requests build what the process keeps anyway (caches, pools).
            for _ in range(20):
                assert (await http.get("/seller/me", headers=headers)).status_code == 200
            baseline = resident_bytes(server.pid)

            stop = asyncio.Event()
            clients = [SlowClient(port, number) for number in range(SLOW_CLIENTS)]
            attack = [asyncio.create_task(client.run(stop)) for client in clients]
            peak = baseline
            served: list[int] = []
            try:
                async with asyncio.timeout(ATTACK_SECONDS):
                    while sum(client.sent for client in clients) < SLOW_CLIENTS * BYTES_PER_CLIENT:
                        peak = max(peak, resident_bytes(server.pid))
                        # Someone else, meanwhile: served as usual.
                        me = await http.get("/seller/me", headers=headers)
                        served.append(me.status_code)
                        await asyncio.sleep(0.2)
                peak = max(peak, resident_bytes(server.pid))
                # The slow clients' last connections are still open, their header blocks unfinished.
                final = await http.get("/seller/me", headers=headers)
            finally:
                stop.set()
                await asyncio.gather(*attack, return_exceptions=True)

    assert served, "no request was made during the attack"
    assert set(served) == {200}, served
    assert final.status_code == 200
    assert final.json()["email"]
    # The server cut off the clients whose header blocks outgrew its limit...
    assert all(client.cut_off > 0 for client in clients)
    # ...so what it held stayed far below what they sent.
    assert peak - baseline < MAX_GROWTH_BYTES, (
        f"the server grew by {(peak - baseline) >> 20} MiB "
        f"while slow clients sent {(SLOW_CLIENTS * BYTES_PER_CLIENT) >> 20} MiB"
    )
