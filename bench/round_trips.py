"""SQL statements and round trips per request of each workload, for the API and for the floor.

Counted on the wire, whatever code sends them: the app under test talks to PostgreSQL through a
proxy in this process that reads the frontend protocol (answering `N` to SSL requests so that
the stream stays readable) and counts, per request:

- SQL statements: each Execute of the extended protocol and each simple Query, except the
  transaction's own (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE), counted apart;
- PostgreSQL round trips: each Sync after an Execute, and each simple Query (the client waits
  for the server after each). Preparing a statement the connection has not seen (Parse,
  Describe, Sync) is a round trip too, but only the first time: those are left out, and the
  warm-up runs every workload first;
- Redis round trips: each command or pipeline redis-py sends (`send_packed_command`).

Requests go straight to the ASGI app (bench/profile.py's `call`), one at a time, so that the
counts belong to one request each.

Usage (the environment of run.sh, whose `KEEP=1` keeps the data and prints the env file):
    python bench/round_trips.py WORK_DIR [-v]
-v lists the statements of each workload's last request.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvloop
from redis.asyncio.connection import AbstractConnection

WORKLOADS = {
    "read": "read one (10 events)",
    "list": "list 20",
    "track": "public tracking (10 events)",
    "create": "create",
    "update": "status update",
    "login": "log in",
}
# Logins hash at bcrypt cost 12 (a quarter of a second each): fewer of them.
REQUESTS = {"login": 3}
DEFAULT_REQUESTS = 20
WARM_UP = 5
SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104
TRANSACTION_CONTROL = ("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE")


@dataclass
class Counts:
    statements: int = 0
    transaction_control: int = 0
    pg_round_trips: int = 0
    redis_round_trips: int = 0
    sql: list[str] = field(default_factory=list)


COUNTS = Counts()


def _reset() -> None:
    global COUNTS  # noqa: PLW0603 - one request's counts at a time
    COUNTS = Counts()


def _count_statement(text: str) -> None:
    words = text.split(None, 1)
    if words and words[0].upper().rstrip(";") in TRANSACTION_CONTROL:
        COUNTS.transaction_control += 1
    else:
        COUNTS.statements += 1
    COUNTS.sql.append(" ".join(text.split()))


class PostgresProxy:
    """Forwards connections to PostgreSQL, counting what the clients send."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        task = asyncio.create_task(self._pipe(up_reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await self._frontend(reader, writer, up_writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    @staticmethod
    async def _frontend(
        reader: asyncio.StreamReader, client: asyncio.StreamWriter, up: asyncio.StreamWriter
    ) -> None:
        while True:  # the startup packet, after any encryption request (declined)
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            rest = await reader.readexactly(length - 8)
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                client.write(b"N")
                await client.drain()
                continue
            up.write(head + rest)
            break
        prepared: dict[bytes, str] = {}
        bound = ""
        executed = False
        while True:
            kind = await reader.readexactly(1)
            size = await reader.readexactly(4)
            payload = await reader.readexactly(struct.unpack("!i", size)[0] - 4)
            if kind == b"Q":
                _count_statement(payload.rstrip(b"\0").decode())
                COUNTS.pg_round_trips += 1
            elif kind == b"P":
                name, query, _ = payload.split(b"\0", 2)
                prepared[name] = query.decode()
            elif kind == b"B":
                _portal, name, _ = payload.split(b"\0", 2)
                bound = prepared.get(name, "?")
            elif kind == b"E":
                _count_statement(bound)
                executed = True
            elif kind == b"S":
                COUNTS.pg_round_trips += executed
                executed = False
            up.write(kind + size + payload)
            await up.drain()


def _count_redis() -> None:
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        COUNTS.redis_round_trips += 1
        await send(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def _load_profile() -> Any:
    """bench/profile.py, by path: its module name would shadow the standard library's."""
    spec = importlib.util.spec_from_file_location(
        "bench_profile", Path(__file__).with_name("profile.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _measure(which: str, work: Path, verbose: bool) -> list[str]:
    profile = _load_profile()
    app = profile.load_app(which)
    lifespan = app.router.lifespan_context(app)
    state = await lifespan.__aenter__()
    for name, value in (state or {}).items():
        setattr(app.state, name, value)
    rows = []
    try:
        makers: dict[str, Callable[[int], Any]] = {
            workload: profile.request_maker(workload, work) for workload in WORKLOADS
        }
        for workload, make in makers.items():
            for number in range(WARM_UP if workload != "login" else 1):
                await profile.call(app, make(number))
        for workload, make in makers.items():
            count = REQUESTS.get(workload, DEFAULT_REQUESTS)
            totals = [0, 0, 0, 0]
            for number in range(count):
                _reset()
                await profile.call(app, make(WARM_UP + number))
                counted = (
                    COUNTS.statements,
                    COUNTS.transaction_control,
                    COUNTS.pg_round_trips,
                    COUNTS.redis_round_trips,
                )
                totals = [total + value for total, value in zip(totals, counted, strict=True)]
            cells = " | ".join(_per_request(total, count) for total in totals)
            rows.append(f"| {WORKLOADS[workload]} | {which} | {cells} |")
            if verbose:
                rows += [f"|   | {sql[:160]} |" for sql in COUNTS.sql]
    finally:
        await lifespan.__aexit__(None, None, None)
    return rows


def _per_request(total: int, count: int) -> str:
    value = total / count
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) > 1 else host))


async def main() -> None:
    work = Path(sys.argv[1])
    verbose = "-v" in sys.argv[2:]
    database_url = os.environ["DATABASE_URL"]
    parts = urlsplit(database_url)
    proxy = PostgresProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await proxy.start()
    os.environ["DATABASE_URL"] = _through(database_url, port)
    os.environ["FLOOR_DATABASE_URL"] = os.environ["DATABASE_URL"]
    os.environ.setdefault("FLOOR_REDIS_URL", os.environ["REDIS_URL"])
    _count_redis()
    rows = [
        "| workload | app | SQL statements | BEGIN/COMMIT/SAVEPOINT... | PostgreSQL round trips "
        "| Redis round trips |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for which in ("api", "floor"):
        rows += await _measure(which, work, verbose)
    sys.stdout.write("Per request, counted on the wire (bench/round_trips.py):\n\n")
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    uvloop.run(main())
