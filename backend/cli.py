"""`shiptrack serve | worker | migrate | demo | openapi | partners`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from pydantic import ValidationError

from backend.config import (
    DEV_JWT_SECRET_KEY,
    MAKE_JWT_KEY_COMMAND,
    HalfConfiguredServices,
    Settings,
)
from backend.context import started_context
from backend.db import create_engine, create_sessionmaker
from backend.demo import DemoData, describe, seed
from backend.embedded import EmbeddedUnavailable, embedded_services
from backend.errors import DomainError
from backend.logging_setup import configure_logging
from backend.main import create_app
from backend.partner_commands import add_partner_commands, run_partner_command
from backend.shipments.tools import shut_down_streams
from backend.worker import OutboxWorker

logger = logging.getLogger("shiptrack")

# Beside the package in a checkout; in the working directory of an installed image.
SOURCE_ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def alembic_ini() -> Path:
    configured = os.environ.get("ALEMBIC_CONFIG")
    if configured:
        return Path(configured)
    return SOURCE_ALEMBIC_INI if SOURCE_ALEMBIC_INI.is_file() else Path.cwd() / "alembic.ini"


def alembic_config(database_url: str) -> Config:
    config = Config(str(alembic_ini()))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def migrate(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


@contextlib.contextmanager
def connected_settings() -> Iterator[tuple[Settings, bool]]:
    """Settings with database and Redis URLs, starting embedded services when none are set."""
    settings = Settings()
    if not settings.uses_embedded_services():
        yield settings, False
        return
    with embedded_services(settings.data_dir) as services:
        # The environment, so that anything reading settings again sees the same services.
        os.environ["DATABASE_URL"] = services.database_url
        os.environ["REDIS_URL"] = services.redis_url
        yield Settings(), True


# Collect the youngest generation every this many net allocations instead of Python's 700: a
# request's objects mostly die by reference counting, and under load the collector kept
# scanning the objects of the requests in flight (bench/README.md).
YOUNG_GENERATION_THRESHOLD = 5000


def settle_garbage_collector() -> None:
    """Once the app has started: what exists now (modules, SQLAlchemy's mappers, pydantic's
    validators, the routes) lives as long as the process, so full collections stop scanning it
    (`gc.freeze`), and young objects are collected less often."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, oldest)


class DrainingServer(uvicorn.Server):
    """Turns readiness to 503 as soon as shutdown starts, while in-flight requests finish.

    With a drain delay, the first SIGTERM only flips readiness and keeps serving for that long,
    so a load balancer polling /health/ready stops sending traffic before the sockets close.
    """

    def __init__(self, config: uvicorn.Config, *, drain_seconds: float = 0.0) -> None:
        super().__init__(config)
        self._drain_seconds = drain_seconds
        self._drain_started = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets is not None and self.started:
            # uvicorn says where it listens only for sockets it bound itself; people and
            # scripts wait for this line.
            self._log_started_message(sockets)
        settle_garbage_collector()

    def handle_exit(self, sig: int, frame: object) -> None:
        app = getattr(self.config, "loaded_app", None)
        while app is not None and not hasattr(app, "state"):
            app = getattr(app, "app", None)  # unwrap uvicorn's proxy-header middleware
        if app is not None and (context := started_context(app)) is not None:
            context.draining = True
            # Streams end now, with a retry hint, even during the drain: they would otherwise
            # keep the process up for the whole graceful period. Signal context: defer to the loop.
            asyncio.get_event_loop().call_soon_threadsafe(shut_down_streams, app)
        if self._drain_seconds > 0 and not self._drain_started:
            self._drain_started = True
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(loop.call_later, self._drain_seconds, self._stop, sig, frame)
            return
        self._stop(sig, frame)

    def _stop(self, sig: int, frame: object) -> None:
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


# Room for the request line (method, target, version) beside MAX_HEADER_BYTES of header fields.
REQUEST_LINE_BYTES = 8 * 1024


def server_config(app: FastAPI, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """How `shiptrack serve` runs uvicorn (tests serve the app with the same configuration).

    Slow clients: uvicorn reads headers with no deadline, whichever parser it uses, so the
    proxy in front bounds the time a request may take to arrive (deploy/nginx.conf). The server
    bounds the memory. httptools, uvicorn's default, keeps every header byte a client sends
    until the block ends; h11 refuses (400) a block beyond `h11_max_incomplete_event_size`, so
    a trickling connection holds at most MAX_HEADER_BYTES plus the request line. Below that,
    the app's own limit answers with a 431 problem+json. `limit_concurrency` stays unset: it
    counts open connections, so a thousand idle ones would turn every real request into a 503.
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http="h11",
        h11_max_incomplete_event_size=settings.max_header_bytes + REQUEST_LINE_BYTES,
        # Idle keep-alive connections close after this; the balancer's own is shorter (§7).
        timeout_keep_alive=5,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        access_log=False,
        log_config=None,
    )


class PublicDevKey(Exception):
    """Serving beyond this machine with the development JWT key, which anyone can read."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other name may resolve to an address others can reach


def refuse_dev_key_beyond_loopback(settings: Settings, host: str) -> None:
    """The dev key is in the repository: with it, anyone who can reach the API can sign a token
    for any account. Whatever ENVIRONMENT says, it only serves this machine."""
    if settings.jwt_secret_key.get_secret_value() != DEV_JWT_SECRET_KEY or is_loopback(host):
        return
    raise PublicDevKey(
        f"refusing to serve on {host} with the development JWT key: it is public, so anyone "
        "could sign a token for any account. Set JWT_SECRET_KEY to a private key, made with "
        f"`{MAKE_JWT_KEY_COMMAND}`, or serve on 127.0.0.1."
    )


class PortUnavailable(Exception):
    """The address `serve` was asked to listen on is taken (another server) or not ours."""


# uvicorn's default.
LISTEN_BACKLOG = 2048


@contextlib.contextmanager
def listening_on(host: str, port: int) -> Iterator[list[socket.socket]]:
    """The server's sockets, bound and listening before anything else starts, so that a second
    `serve` on a busy port stops at once instead of after starting embedded services and
    migrating. uvicorn then serves on these very sockets: nobody can take the port in between.

    Made as uvicorn's own would be (asyncio's `create_server`): one per address the host
    resolves to (`localhost` is 127.0.0.1 and ::1), each with SO_REUSEADDR, so that a restart
    may reuse the port while old connections linger in TIME_WAIT (on Linux this never lets two
    servers listen on one port)."""
    with contextlib.ExitStack() as stack:
        try:
            addresses = socket.getaddrinfo(
                host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            sockets = []
            for family, kind, protocol, _, address in dict.fromkeys(addresses):
                sock = stack.enter_context(socket.socket(family, kind, protocol))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(LISTEN_BACKLOG)
                sockets.append(sock)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortUnavailable(
                    f"port {port} on {host} is already in use; stop the other server or pass "
                    "--port (or set PORT) to use another one"
                ) from None
            reason = error.strerror or str(error)
            raise PortUnavailable(f"cannot listen on {host} port {port}: {reason}") from None
        yield sockets


def serve(args: argparse.Namespace) -> None:
    configured = Settings()
    host = args.host or configured.host
    port = args.port or configured.port
    # Before anything starts, embedded services included.
    refuse_dev_key_beyond_loopback(configured, host)
    configured.uses_embedded_services()  # refuses one URL without the other
    with listening_on(host, port) as sockets, connected_settings() as (settings, embedded):
        configure_logging(settings.effective_log_format, settings.log_level)
        if embedded:
            assert settings.database_url is not None
            migrate(settings.database_url)
        config = server_config(
            # Embedded mode is one command for everything, the outbox worker included.
            create_app(settings, run_worker=embedded),
            settings,
            host=host,
            port=port,
        )
        logger.info("Shiptrack on http://%s:%s (reference at /scalar)", config.host, config.port)
        # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit lets
        # the embedded services stop on the way out instead of being orphaned.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        DrainingServer(config, drain_seconds=settings.shutdown_drain_seconds).run(sockets=sockets)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum if signum != signal.SIGTERM else 0)


def run_worker(_args: argparse.Namespace) -> None:
    with connected_settings() as (settings, embedded):
        configure_logging(settings.effective_log_format, settings.log_level)
        assert settings.database_url is not None
        if embedded:
            migrate(settings.database_url)
        asyncio.run(_work(settings, settings.database_url))


async def _work(settings: Settings, database_url: str) -> None:
    engine = create_engine(settings, database_url)
    worker = OutboxWorker(settings, create_sessionmaker(engine))
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, worker.stop)
    try:
        await worker.run()
    finally:
        await engine.dispose()


def run_migrations(_args: argparse.Namespace) -> None:
    with connected_settings() as (settings, _embedded):
        configure_logging(settings.effective_log_format, settings.log_level)
        assert settings.database_url is not None
        migrate(settings.database_url)
        logger.info("database is at the latest migration")


def seed_demo(_args: argparse.Namespace) -> None:
    with connected_settings() as (settings, _embedded):
        assert settings.database_url is not None
        migrate(settings.database_url)
        # The printed summary is the output; request logs would bury it.
        app = create_app(settings.model_copy(update={"log_level": "WARNING"}))

        async def run() -> DemoData:
            async with app.router.lifespan_context(app):
                return await seed(app)

        print(describe(asyncio.run(run()), settings.public_base_url))  # noqa: T201 - CLI output


def manage_partners(args: argparse.Namespace) -> None:
    """The operator's partner commands, against DATABASE_URL or the embedded database."""
    with connected_settings() as (settings, embedded):
        assert settings.database_url is not None
        if embedded:
            migrate(settings.database_url)
        output = asyncio.run(run_partner_command(settings, settings.database_url, args))
    print(output)  # noqa: T201 - CLI output


def print_openapi(_args: argparse.Namespace) -> None:
    schema = create_app(Settings()).openapi()
    json.dump(schema, sys.stdout, indent=2)
    sys.stdout.write("\n")


def settings_problem(error: ValidationError) -> str:
    """pydantic's multi-line report as one line, each problem under its variable's name.

    A check across settings (the JWT key's) has no location, only its own message."""
    problems = []
    for problem in error.errors(include_url=False, include_input=False):
        message = problem["msg"].removeprefix("Value error, ")
        names = ".".join(str(part) for part in problem["loc"])
        problems.append(f"{names.upper()}: {message}" if names else message)
    return "; ".join(problems)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shiptrack", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve_parser = commands.add_parser("serve", help="run the API (embedded services if no URLs)")
    serve_parser.add_argument("--host", default=None)
    serve_parser.add_argument("--port", type=int, default=None)
    serve_parser.set_defaults(handler=serve)

    commands.add_parser("worker", help="deliver queued emails and webhooks").set_defaults(
        handler=run_worker
    )
    commands.add_parser("migrate", help="apply database migrations").set_defaults(
        handler=run_migrations
    )
    commands.add_parser("openapi", help="print the OpenAPI document").set_defaults(
        handler=print_openapi
    )
    commands.add_parser(
        "demo", help="create demo accounts and shipments; prints tokens and tracking links"
    ).set_defaults(handler=seed_demo)

    add_partner_commands(commands, manage_partners)

    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except ValidationError as error:
        # Settings refused: say what to fix, on one line, without a traceback.
        parser.exit(2, f"shiptrack: {settings_problem(error)}\n")
    except (EmbeddedUnavailable, HalfConfiguredServices, PublicDevKey, PortUnavailable) as error:
        # Configuration problems: say what to fix, without a traceback.
        parser.exit(2, f"shiptrack: {error}\n")
    except DomainError as error:
        # The operator asked for something that cannot be done (an unknown partner).
        parser.exit(1, f"shiptrack: {error.detail}\n")
    except KeyboardInterrupt:
        # Ctrl-C: everything has been shut down by the context managers on the way here.
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
