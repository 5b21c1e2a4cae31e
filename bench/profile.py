"""CPU, and instructions, per request of one workload, in process: for profiling.

Sends a workload's requests straight to the API's (or the floor's) ASGI app, with no HTTP server
and no load generator sharing the CPU, from CONCURRENCY tasks at once as wrk's connections would.
It prints the CPU time per request. For a figure that does not move with the machine's load, count
instructions with callgrind: the measured requests run inside `itertools.starmap`, so

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=starmap_next \\
        --callgrind-out-file=/dev/null .venv/bin/python bench/profile.py api read

collects exactly them (divide the "Collected" total by the number of requests). Valgrind runs
everything about fifty times slower: raise the database, Redis and pool timeouts, for example
DB_COMMAND_TIMEOUT_SECONDS=600 DB_STATEMENT_TIMEOUT_MS=600000 DB_POOL_TIMEOUT_SECONDS=600
REDIS_TIMEOUT_SECONDS=600. py-spy, cProfile or pyinstrument wrap it just as well.

It needs the data of a benchmark run: `KEEP=1 bash bench/run.sh` keeps the scratch database, Redis
and the seeded files, and prints the `env` file to source (within the tokens' 30 minutes).

Usage: python bench/profile.py api|floor read|read_key|list|track|create|update|login [REQUESTS]
(`read_key`: `read` with the seller's API key instead of its access token; the API only)
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

CONCURRENCY = int(os.environ.get("CONCURRENCY", "32"))
WARM_UP_REQUESTS = 64


JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
# (method, path and query, body, bearer token or None, content type) of one request.
Request = tuple[str, str, bytes, str | None, str]


def request_maker(workload: str, work: Path) -> Callable[[int], Request]:
    """The i-th request of a workload, as the wrk scripts send them."""
    seller = (work / "token").read_text().strip()
    api_key = (work / "api_key").read_text().strip()
    partner = (work / "partner_token").read_text().strip()
    read_ids = (work / "ids").read_text().split()
    numbers = (work / "tracking_numbers").read_text().split()
    update_ids = (work / "update_ids").read_text().split()
    create_body = (work / "create_body.json").read_bytes()
    update_body = (work / "update_body.json").read_bytes()
    login_form = (work / "login").read_bytes()
    workloads: dict[str, Callable[[int], Request]] = {
        "read": lambda i: ("GET", f"/shipments/{read_ids[i % len(read_ids)]}", b"", seller, JSON),
        "read_key": lambda i: (
            "GET",
            f"/shipments/{read_ids[i % len(read_ids)]}",
            b"",
            api_key,
            JSON,
        ),
        "list": lambda i: ("GET", "/shipments?limit=20", b"", seller, JSON),
        "track": lambda i: ("GET", f"/track/{numbers[i % len(numbers)]}", b"", None, JSON),
        "create": lambda i: ("POST", "/shipments", create_body, seller, JSON),
        "update": lambda i: (
            "PATCH",
            f"/shipments/{update_ids[i % len(update_ids)]}",
            update_body,
            partner,
            JSON,
        ),
        "login": lambda i: ("POST", "/seller/token", login_form, None, FORM),
    }
    return workloads[workload]


def load_app(which: str) -> Any:
    if which == "floor":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import floor  # noqa: PLC0415 - the floor app is a script beside this one

        return floor.app
    from backend.main import create_app  # noqa: PLC0415 - reads the environment when called

    return create_app()


async def call(app: Any, request: Request) -> None:
    method, target, body, token, content_type = request
    path, _, query = target.partition("?")
    headers = [(b"host", b"127.0.0.1")]
    if token is not None:
        headers += [(b"authorization", f"Bearer {token}".encode())]
    if body:
        headers += [(b"content-type", content_type.encode())]
        headers += [(b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    body_sent: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message["type"] == "http.response.body":
            body_sent.append(message.get("body", b""))

    await app(scope, receive, send)
    if statuses[0] >= 300:
        raise SystemExit(f"{method} {path}: {statuses[0]} {b''.join(body_sent)[:500]!r}")


async def run(app: Any, make_request: Callable[[int], Request], start: int, count: int) -> None:
    async def client(offset: int) -> None:
        for number in range(offset, start + count, CONCURRENCY):
            await call(app, make_request(number))

    await asyncio.gather(*(client(start + lane) for lane in range(CONCURRENCY)))


def main() -> None:
    which, workload = sys.argv[1], sys.argv[2]
    requests = int(sys.argv[3]) if len(sys.argv) > 3 else 320
    app = load_app(which)
    make_request = request_maker(workload, Path(os.environ["BENCH_WORK"]))
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    lifespan = app.router.lifespan_context(app)
    state = loop.run_until_complete(lifespan.__aenter__())
    for name, value in (state or {}).items():
        setattr(app.state, name, value)
    # Statements prepared, pools filled, caches warm: what follows is the steady state.
    loop.run_until_complete(run(app, make_request, 0, WARM_UP_REQUESTS))

    def measured() -> float:
        started = time.process_time()
        loop.run_until_complete(run(app, make_request, WARM_UP_REQUESTS, requests))
        return time.process_time() - started

    [cpu_seconds] = itertools.starmap(measured, [()])
    loop.run_until_complete(lifespan.__aexit__(None, None, None))
    per_request = 1000 * cpu_seconds / requests
    sys.stdout.write(f"{which} {workload}: {per_request:.3f} ms of CPU per request\n")


if __name__ == "__main__":
    main()
