"""Memory per idle live-update stream, and the API's latency under 10,000 of them.

    .venv/bin/python bench/stream_memory.py [--streams 10000] [--redis redis://127.0.0.1:6379/9]
        [--load-seconds 10] [--readers 8] [--logins 2]

Creates a scratch database on PostgreSQL 127.0.0.1:5432 (user postgres), migrates it, starts
`shiptrack serve` (one process, defaults except the stream caps, the login rate limits and
bcrypt cost 4), signs up a seller and a partner and creates a shipment. It then runs a steady
load for `--load-seconds`: `--readers` clients reading the shipment as its seller and `--logins`
clients logging in, each sending its next request when the last is answered, and records every
latency. Then it opens `--streams` public streams of that shipment from this process over
loopback (raw sockets, each read up to its first event), reads the server's RSS before and after,
runs the same steady load again with every stream open, and prints p50/p99 of reads and logins
in both runs with the p99 ratio (target: within 2x). Last, it checks that a partner update still
reaches the streams and times how long the server takes to exit after SIGTERM with every stream
open. The database is dropped and the Redis database flushed at the end. Every connection is to
127.0.0.1, and every phase is bounded. A measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from redis import Redis

REPOSITORY = Path(__file__).resolve().parent.parent
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ZIP = "10001"
PASSWORD = "correct horse battery staple"  # noqa: S105 - a scratch account
OPENING_AT_ONCE = 100


def raise_open_files_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 30_000), hard))


def say(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the output of a measurement script


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    name = f"shiptrack_bench_streams_{os.getpid()}"

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(ADMIN_DSN)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def server(database_url: str, redis_url: str, streams: int) -> Iterator[subprocess.Popen[bytes]]:
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPOSITORY),
        "ENVIRONMENT": "dev",
        "PARTNER_APPROVAL": "auto",  # the seeded partner takes shipments at once
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STREAMS_PER_CLIENT": str(streams + 100),
        "STREAMS_PER_PROCESS": str(streams + 100),
        # The steady load logs in far more often than a person would.
        "TOKEN_ATTEMPTS_PER_ACCOUNT": "100000000",
        "TOKEN_ATTEMPTS_PER_IP": "100000000",
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "backend.cli"]
    subprocess.run([*command, "migrate"], env=environment, check=True, cwd=tempfile.gettempdir())  # noqa: S603
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [*command, "serve", "--port", environment.setdefault("PORT", str(free_port()))],
        env=environment,
        cwd=tempfile.gettempdir(),
        preexec_fn=raise_open_files_limit,  # noqa: PLW1509 - no threads yet
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def wait_ready(http: httpx.AsyncClient) -> None:
    for _ in range(300):
        with contextlib.suppress(httpx.TransportError):
            if (await http.get("/health/ready")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError("the server never became ready")


async def token(http: httpx.AsyncClient, kind: str, email: str) -> dict[str, str]:
    response = await http.post(f"/{kind}/token", data={"username": email, "password": PASSWORD})
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def seed(http: httpx.AsyncClient) -> tuple[dict[str, Any], str, dict[str, str]]:
    """A shipment, its seller's email and its partner's auth headers."""
    tag = uuid.uuid4().hex[:8]
    seller: dict[str, str] = {
        "email": f"s-{tag}@example.com",
        "password": PASSWORD,
        "name": "Bench Seller",
        "zip_code": "02139",
        "address": "1 Main St",
    }
    partner = {
        "email": f"p-{tag}@example.com",
        "password": PASSWORD,
        "name": "Bench Couriers",
        "serviceable_zip_codes": [ZIP],
        "max_handling_capacity": 10,
    }
    (await http.post("/seller/signup", json=seller)).raise_for_status()
    (await http.post("/partner/signup", json=partner)).raise_for_status()
    seller_headers = await token(http, "seller", seller["email"])
    partner_headers = await token(http, "partner", str(partner["email"]))
    body = {
        "content": "Books",
        "weight_kg": 1.5,
        "destination": {"zip_code": ZIP, "address_line": "1 Main St", "city": "New York"},
        "recipient": {"name": "Grace Hopper", "email": f"r-{tag}@example.com"},
    }
    response = await http.post("/shipments", json=body, headers=seller_headers)
    response.raise_for_status()
    return response.json(), seller["email"], partner_headers


class RawStream:
    """One SSE stream on a raw socket: cheaper on this side than an HTTP client's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str) -> RawStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        stream = cls(reader, writer)
        await stream.read_until(b"event: timeline")
        return stream

    async def read_until(self, marker: bytes) -> bytes:
        seen = b""
        while marker not in seen:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError(f"stream ended before {marker!r}: {seen[-300:]!r}")
            seen += chunk
        return seen

    async def read_to_end(self) -> bytes:
        seen = b""
        while chunk := await self.reader.read(65536):
            seen += chunk
        return seen


async def open_streams(port: int, path: str, count: int) -> list[RawStream]:
    gate = asyncio.Semaphore(OPENING_AT_ONCE)

    async def one() -> RawStream:
        async with gate:
            return await RawStream.open(port, path)

    return list(await asyncio.gather(*(one() for _ in range(count))))


@dataclass(frozen=True, slots=True)
class SteadyLoad:
    seconds: float
    readers: int
    logins: int


@dataclass(slots=True)
class Latencies:
    """Seconds per answered request of one kind, and the requests that did not answer 200."""

    seconds: list[float] = field(default_factory=list)
    failures: int = 0

    def percentile(self, share: float) -> float:
        """Nearest-rank percentile, in milliseconds."""
        ranked = sorted(self.seconds)
        return 1000 * ranked[max(0, math.ceil(share * len(ranked)) - 1)] if ranked else math.nan


async def steady_load(
    port: int, shipment_id: str, seller_email: str, load: SteadyLoad
) -> dict[str, Latencies]:
    """`load.readers` clients reading and `load.logins` logging in, each one request at a time,
    for `load.seconds`; every latency, by kind."""
    results = {"read": Latencies(), "login": Latencies()}
    limits = httpx.Limits(max_connections=load.readers + load.logins)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
    ) as http:
        seller_headers = await token(http, "seller", seller_email)
        credentials = {"username": seller_email, "password": PASSWORD}
        ends_at = time.monotonic() + load.seconds

        async def loop(kind: str, send: Callable[[], Awaitable[httpx.Response]]) -> None:
            while time.monotonic() < ends_at:
                started = time.monotonic()
                try:
                    response = await send()
                except httpx.HTTPError:
                    results[kind].failures += 1
                    continue
                if response.status_code == 200:
                    results[kind].seconds.append(time.monotonic() - started)
                else:
                    results[kind].failures += 1

        def read() -> Awaitable[httpx.Response]:
            return http.get(f"/shipments/{shipment_id}", headers=seller_headers)

        def log_in() -> Awaitable[httpx.Response]:
            return http.post("/seller/token", data=credentials)

        await asyncio.gather(
            *(loop("read", read) for _ in range(load.readers)),
            *(loop("login", log_in) for _ in range(load.logins)),
        )
    return results


def report_latencies(
    quiet: dict[str, Latencies], busy: dict[str, Latencies], streams: int, load: SteadyLoad
) -> None:
    say(
        f"steady load for {load.seconds:.0f}s each: {load.readers} clients reading a shipment "
        f"(seller token), {load.logins} logging in, each one request at a time"
    )
    say("| requests | streams open | answered | not 200 | p50 ms | p99 ms |")
    say("|---|---|---|---|---|---|")
    for kind in ("read", "login"):
        for label, run in (("0", quiet[kind]), (f"{streams:,}", busy[kind])):
            say(
                f"| {kind} | {label} | {len(run.seconds)} | {run.failures} | "
                f"{run.percentile(0.50):.1f} | {run.percentile(0.99):.1f} |"
            )
    for kind in ("read", "login"):
        ratio = busy[kind].percentile(0.99) / quiet[kind].percentile(0.99)
        say(f"p99 of {kind}s, {streams:,} streams open vs none: {ratio:.2f}x (target <= 2x)")


async def measure(
    process: subprocess.Popen[bytes], port: int, streams: int, load: SteadyLoad
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        await wait_ready(http)
        shipment, seller_email, partner_headers = await seed(http)
        path = f"/track/{shipment['tracking_number']}/stream"
        # Warm up (imports, caches, pools) with a few streams, then settle.
        for stream in await open_streams(port, path, 200):
            stream.writer.close()
        await asyncio.sleep(2)
        quiet = await steady_load(port, shipment["id"], seller_email, load)
        await asyncio.sleep(2)
        before = rss_kib(process.pid)
        started = time.monotonic()
        opened = await open_streams(port, path, streams)
        opening = time.monotonic() - started
        await asyncio.sleep(2)
        after = rss_kib(process.pid)
        say(f"opened {streams} streams in {opening:.1f}s")
        say(
            f"server RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB: "
            f"{(after - before) / streams:.1f} KiB per idle stream"
        )
        busy = await steady_load(port, shipment["id"], seller_email, load)
        report_latencies(quiet, busy, streams, load)

        started = time.monotonic()
        seller_headers = await token(http, "seller", seller_email)  # raises unless 200
        read = await http.get(f"/shipments/{shipment['id']}", headers=seller_headers)
        update = await http.patch(
            f"/shipments/{shipment['id']}", json={"status": "in_transit"}, headers=partner_headers
        )
        await asyncio.gather(*(s.read_until(b"id: 2") for s in (opened[0], opened[-1])))
        say(
            f"with {streams} streams open: login 200, authenticated read {read.status_code}, "
            f"partner update {update.status_code} (heard on the first and last stream), "
            f"in {time.monotonic() - started:.2f}s"
        )

        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        endings = await asyncio.gather(*(s.read_to_end() for s in opened))
        ended = time.monotonic() - signalled
        await asyncio.to_thread(process.wait)
        exited = time.monotonic() - signalled
        hinted = sum(b"retry:" in ending for ending in endings)
        say(
            f"SIGTERM: {hinted}/{streams} streams ended with a retry hint within "
            f"{ended:.2f}s; process exited with {process.returncode} after {exited:.2f}s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--logins", type=int, default=2)
    args = parser.parse_args()
    load = SteadyLoad(args.load_seconds, args.readers, args.logins)
    raise_open_files_limit()
    port = free_port()
    os.environ["PORT"] = str(port)
    with scratch_database() as database_url:
        try:
            with server(database_url, args.redis, args.streams) as process:
                asyncio.run(measure(process, port, args.streams, load))
        finally:
            Redis.from_url(args.redis).flushdb()


if __name__ == "__main__":
    main()
