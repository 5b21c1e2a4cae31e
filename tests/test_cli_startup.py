"""`shiptrack` refuses a start that cannot work with one line saying what to do, before it
starts embedded servers, migrates or binds anything: a busy port, one service URL without the
other, production without a JWT key. Each runs the real command in a process of its own, with
an environment made here (nothing from the developer's shell or `.env`)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
# A guard against hanging, never a measurement: a refusal comes in about a second.
COMMAND_SECONDS = 60.0
START_SECONDS = 30.0


def cli_environment(folder: Path, **variables: str) -> dict[str, str]:
    """Only what the interpreter needs, plus `variables`; embedded data would go in `folder`."""
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPOSITORY),
        "HOME": str(folder),
        "DATA_DIR": str(folder / "data"),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "console",
        **variables,
    }


def shiptrack(folder: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "backend.cli", *args],
        cwd=folder,  # no .env file of the checkout is read
        env=cli_environment(folder, **variables),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit status 2, a single `shiptrack: …` line, no traceback."""
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("shiptrack: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.removeprefix("shiptrack: ").strip()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port with a server listening on it, set up as uvicorn sets up its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


def test_serve_on_a_busy_port_stops_before_starting_anything(
    tmp_path: Path, busy_port: int
) -> None:
    # No URLs: without the check, embedded PostgreSQL and Redis would start and be migrated.
    result = shiptrack(tmp_path, "serve", "--port", str(busy_port), ENVIRONMENT="dev")

    error = one_line_error(result)
    assert error.startswith(f"port {busy_port} on 127.0.0.1 is already in use; ")
    assert "stop the other server or pass --port" in error
    assert not (tmp_path / "data").exists(), "embedded services were started"


def test_serve_reads_the_busy_port_from_the_environment_too(tmp_path: Path, busy_port: int) -> None:
    result = shiptrack(tmp_path, "serve", ENVIRONMENT="dev", PORT=str(busy_port))

    assert f"port {busy_port} on 127.0.0.1 is already in use" in one_line_error(result)
    assert not (tmp_path / "data").exists()


def test_serve_says_why_it_cannot_listen_on_an_address_it_does_not_have(tmp_path: Path) -> None:
    # TEST-NET-1 is no address of this machine. A private key: the dev key would be refused
    # there first.
    result = shiptrack(
        tmp_path,
        "serve",
        "--host",
        "192.0.2.1",
        ENVIRONMENT="dev",
        JWT_SECRET_KEY="a private key of more than thirty-two bytes, for tests",
    )

    assert one_line_error(result).startswith("cannot listen on 192.0.2.1 port 8000: ")
    assert not (tmp_path / "data").exists()


@contextlib.contextmanager
def running_server(
    folder: Path, port: int, database_url: str, redis_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    log = folder / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)],
            cwd=folder,
            env=cli_environment(
                folder,
                ENVIRONMENT="dev",
                DATABASE_URL=database_url,
                REDIS_URL=redis_url,
                BCRYPT_ROUNDS="4",
                GRACEFUL_SHUTDOWN_SECONDS="2",
            ),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=START_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_live(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        assert process.poll() is None, f"shiptrack serve exited:\n{log.read_text()}"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/health/live", timeout=1.0).status_code == 200:
                return
        assert time.monotonic() < deadline, f"shiptrack serve did not start:\n{log.read_text()}"
        time.sleep(0.1)


def test_a_second_server_on_the_same_port_is_refused_while_the_first_serves(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    base_url = f"http://127.0.0.1:{port}"

    with running_server(first, port, database_url, redis_url) as server:
        wait_until_live(base_url, server, first / "serve.log")
        # uvicorn serves on the socket `serve` bound first, and still says where.
        assert f"Uvicorn running on {base_url}" in (first / "serve.log").read_text()
        root = httpx.get(f"{base_url}/", timeout=5.0)
        assert root.status_code == 307
        assert root.headers["location"] == "/scalar"

        result = shiptrack(second, "serve", "--port", str(port), ENVIRONMENT="dev")

        error = one_line_error(result)
        assert error.startswith(f"port {port} on 127.0.0.1 is already in use")
        assert not (second / "data").exists(), "embedded services were started"
        # The first server never noticed.
        assert httpx.get(f"{base_url}/health/live", timeout=5.0).status_code == 200


URLS = {
    "DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
    "REDIS_URL": "redis://127.0.0.1:6379/11",
}


# `serve` checks before binding its port; the other commands where they choose the services.
@pytest.mark.parametrize(
    ("command", "given", "missing"),
    [
        ("serve", "DATABASE_URL", "REDIS_URL"),
        ("serve", "REDIS_URL", "DATABASE_URL"),
        ("migrate", "DATABASE_URL", "REDIS_URL"),
        ("worker", "REDIS_URL", "DATABASE_URL"),
    ],
)
def test_one_service_url_without_the_other_is_refused(
    tmp_path: Path, command: str, given: str, missing: str
) -> None:
    result = shiptrack(tmp_path, command, ENVIRONMENT="dev", **{given: URLS[given]})

    assert one_line_error(result) == (
        f"{given} is set but {missing} is not: set both to use your own PostgreSQL and "
        "Redis, or neither to have shiptrack start embedded ones"
    )
    # Before, the embedded servers started beside the URL that was given, and were used.
    assert not (tmp_path / "data").exists(), "embedded services were started"


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_production_without_a_jwt_key_says_how_to_make_one(tmp_path: Path, command: str) -> None:
    # No ENVIRONMENT: production, the default outside `make`.
    result = shiptrack(tmp_path, command, EMAIL_BACKEND="smtp")

    error = one_line_error(result)
    assert error.startswith("JWT_SECRET_KEY must be set when ENVIRONMENT=production: ")
    assert 'python -c "import secrets; print(secrets.token_urlsafe(48))"' in error
    assert "validation error" not in error  # pydantic's report, reworded
    assert not (tmp_path / "data").exists()


def test_each_refused_setting_is_named_on_the_one_line(tmp_path: Path) -> None:
    result = shiptrack(tmp_path, "migrate", ENVIRONMENT="dev", BCRYPT_ROUNDS="99", PORT="x")

    error = one_line_error(result)
    assert "BCRYPT_ROUNDS: " in error
    assert "PORT: " in error
