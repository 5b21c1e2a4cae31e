"""SIGTERM to `shiptrack serve` with live-update streams open.

Streams end at once with a `retry:` hint (their clients resume elsewhere), real requests in
flight still finish, and a process left with only streams exits long before its graceful
period. The server is a real process on 127.0.0.1, on the test's PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults.servers import free_tcp_port, scratch_folder
from tests.faults.test_graceful_shutdown import (
    ServerProcess,
    creates_waiting_on_the_lock,
    exited_within,
    partners_locked,
    seller_with_a_partner,
    wait_until_ready,
)
from tests.shipments.test_live_updates import SAFETY_SECONDS, public_path, scenario
from tests.shipments.test_stream_limits import (
    MANY_STREAMS,
    many_connections_client,
    open_many,
    rest_of_stream,
)

REPOSITORY = Path(__file__).resolve().parents[2]
# Long enough that exiting within EXIT_LIMIT_SECONDS shows the streams did not wait it out.
GRACEFUL_SECONDS = 30
EXIT_LIMIT_SECONDS = 5.0


@contextlib.contextmanager
def shiptrack_serve(database_url: str, redis_url: str) -> Iterator[ServerProcess]:
    """`shiptrack serve` in its own process, configured only through its environment."""
    with scratch_folder("shiptrack-streams-") as folder:
        port = free_tcp_port()
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TEST_")},
            "PYTHONPATH": str(REPOSITORY),
            "ENVIRONMENT": "dev",
            "PARTNER_APPROVAL": "auto",  # its partner takes shipments at once
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DATA_DIR": str(folder / "data"),
            "GRACEFUL_SHUTDOWN_SECONDS": str(GRACEFUL_SECONDS),
            "STREAMS_PER_CLIENT": str(MANY_STREAMS),
            # Creates wait on the test's lock: no timeout may end them first.
            "DB_STATEMENT_TIMEOUT_MS": "60000",
            "DB_COMMAND_TIMEOUT_SECONDS": "60",
            "BCRYPT_ROUNDS": "4",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "console",
        }
        log = folder / "serve.log"
        with log.open("wb") as output:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)],
                cwd=folder,  # no .env file of the checkout is read
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # A thousand streams are a thousand sockets in the server too.
                preexec_fn=_raise_open_files_limit,  # noqa: PLW1509 - no threads at this point
            )
        server = ServerProcess(process, port, log)
        try:
            yield server
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=SAFETY_SECONDS)


def _raise_open_files_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000), hard))


@pytest.fixture(autouse=True)
def _generous_open_files() -> None:
    _raise_open_files_limit()


async def test_sigterm_ends_a_thousand_streams_and_the_process_exits(
    database_url: str, redis_url: str
) -> None:
    with shiptrack_serve(database_url, redis_url) as server:
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=SAFETY_SECONDS) as http,
            many_connections_client(server.base_url) as crowd,
            AsyncExitStack() as stack,
        ):
            await wait_until_ready(server, http)
            setup = await scenario(http)
            streams = await open_many(stack, crowd, public_path(setup.shipment), MANY_STREAMS)

            server.process.send_signal(signal.SIGTERM)
            exit_code = await exited_within(server.process, EXIT_LIMIT_SECONDS)
            endings = await asyncio.gather(*(rest_of_stream(stream) for stream in streams))
        log = server.output()

    assert exit_code == 0, f"exit code {exit_code}:\n{log[-3000:]}"
    assert all(ending and ending[-1].retry is not None for ending in endings)
    assert "Traceback" not in log, log[-3000:]


async def test_sigterm_ends_streams_at_once_while_requests_in_flight_finish(
    database_url: str, redis_url: str, db_engine: AsyncEngine
) -> None:
    with shiptrack_serve(database_url, redis_url) as server:
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=SAFETY_SECONDS * 3) as http,
            AsyncExitStack() as stack,
        ):
            await wait_until_ready(server, http)
            seller_headers = await seller_with_a_partner(http)
            setup = await scenario(http)
            streams = await open_many(stack, http, public_path(setup.shipment), 10)

            async with partners_locked(db_engine):
                creates = await creates_waiting_on_the_lock(http, db_engine, seller_headers)
                server.process.send_signal(signal.SIGTERM)
                # The streams end while the creates are still waiting inside PostgreSQL.
                endings = await asyncio.gather(*(rest_of_stream(stream) for stream in streams))
                still_waiting = not any(task.done() for task in creates)
            responses = await asyncio.gather(*creates)
            exit_code = await exited_within(server.process, GRACEFUL_SECONDS)

    assert still_waiting
    assert all(ending and ending[-1].retry is not None for ending in endings)
    assert [response.status_code for response in responses] == [201] * len(creates)
    assert exit_code == 0
