"""Outbox delivery throughput: emails/s and webhooks/s of 1, 2 and 4 `shiptrack worker` processes.

    .venv/bin/python bench/outbox_rate.py [--count 3000] [--workers 1,2,4] [--deadline 90]

Everything stays on loopback. The script creates a scratch database `shiptrack_outbox_rate_<pid>`
on PostgreSQL 127.0.0.1:5432 (user postgres, trust), migrates it, and starts, in a child process
of its own, an SMTP sink (aiosmtpd, accepts everything) and an HTTP receiver (a minimal HTTP/1.1
server: paths under /fast/ answer 200 at once, paths under /slow/ after 2 s). For each worker
count it runs two scenarios on a freshly filled outbox:

- `emails`: K emails (the "delivered" template), nothing else;
- `mixed`: K/4 webhooks to the 2 s receiver (the oldest rows, at the head of the queue), then K
  webhooks to the fast receiver and K emails, interleaved.

Webhooks go to 20 fast and 20 slow endpoints of one seller, one event per delivery. The workers
run with every setting at its default except what the loopback setup needs (SMTP host and port,
`WEBHOOKS_ALLOW_PRIVATE=true`, `LOG_LEVEL=WARNING`). A scenario ends when every email and fast
webhook is sent or after `--deadline` seconds; the workers then get SIGTERM.

A kind's rate is (sent - 1) / (last sent_at - first sent_at), from the rows' own `sent_at`: worker
start-up is not counted. For the slow webhooks (which cannot finish in a bounded run) it is those
sent from the first row of any kind was sent to the end of the scenario. The database is dropped
and the child process stopped on exit, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from aiosmtpd.smtp import SMTP

ROOT = Path(__file__).resolve().parent.parent
SHIPTRACK = ROOT / ".venv" / "bin" / "shiptrack"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/9"
SLOW_SECONDS = 2.0
ENDPOINTS = 20
SECRET = "whsec_" + "A" * 43 + "="


# --- the sinks (child process) -----------------------------------------------------------------


async def _http_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        target = request_line.split(" ", 2)[1]
        length = 0
        for line in lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        if target.startswith("/slow/"):
            await asyncio.sleep(SLOW_SECONDS)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


class _AcceptAll:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        return "250 2.0.0 OK"


def _run_sinks(ports: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = _AcceptAll()
        smtp = await loop.create_server(
            lambda: SMTP(handler, hostname="smtp.bench", loop=loop), "127.0.0.1", 0, backlog=1024
        )
        http = await asyncio.start_server(_http_answer, "127.0.0.1", 0, backlog=1024)
        ports.put((smtp.sockets[0].getsockname()[1], http.sockets[0].getsockname()[1]))
        await asyncio.Event().wait()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(main())


# --- filling the outbox ------------------------------------------------------------------------


def _email_payload(number: int) -> str:
    url = f"https://track.example/t/BENCH{number:010d}"
    return json.dumps(
        {
            "template": "delivered",
            "to": f"reader{number}@example.com",
            "recipient_name": "Grace Hopper",
            "tracking_number": f"BENCH{number:010d}",
            "tracking_url": url,
            "content": f"parcel {number}",
            "partner_name": "Speedy Couriers",
            "review_url": f"{url}?review=token",
            "redact_after_send": [],
        }
    )


async def _setup(dsn: str, http_port: int) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """A seller with 20 fast and 20 slow endpoints; returns their ids."""
    connection = await asyncpg.connect(dsn)
    try:
        seller = uuid.uuid4()
        await connection.execute(
            "INSERT INTO sellers (id, name, email, password_hash, zip_code, created_at,"
            " updated_at) VALUES ($1, 'Bench', 'bench@example.com', 'x', '10115', now(), now())",
            seller,
        )
        ids: dict[str, list[uuid.UUID]] = {"fast": [], "slow": []}
        for speed, found in ids.items():
            for number in range(ENDPOINTS):
                endpoint = uuid.uuid4()
                await connection.execute(
                    "INSERT INTO webhook_endpoints (id, seller_id, url, secret, enabled,"
                    " created_at) VALUES ($1, $2, $3, $4, true, now())",
                    endpoint,
                    seller,
                    f"http://127.0.0.1:{http_port}/{speed}/{number}",
                    SECRET,
                )
                found.append(endpoint)
        return ids["fast"], ids["slow"]
    finally:
        await connection.close()


async def _fill(
    dsn: str, scenario: str, count: int, fast: list[uuid.UUID], slow: list[uuid.UUID]
) -> dict[str, int]:
    """Empty the outbox, then queue the scenario's rows; returns how many of each label."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("TRUNCATE outbox_messages, webhook_deliveries, events")
        seller = await connection.fetchval("SELECT id FROM sellers LIMIT 1")
        rows: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        labels = {"email": 0, "fast": 0, "slow": 0}

        def webhook(endpoints: list[uuid.UUID], number: int) -> None:
            event = uuid.uuid4()
            events.append((event, seller, "shipment.created", json.dumps({"n": number})))
            payload = {"endpoint_id": str(endpoints[number % ENDPOINTS]), "event_id": str(event)}
            rows.append(("webhook", json.dumps(payload)))

        if scenario == "mixed":
            for number in range(count // 4):
                webhook(slow, number)
                labels["slow"] += 1
        for number in range(count):
            rows.append(("email", _email_payload(number)))
            labels["email"] += 1
            if scenario == "mixed":
                webhook(fast, number)
                labels["fast"] += 1
        await connection.executemany(
            "INSERT INTO events (id, seller_id, type, data, created_at)"
            " VALUES ($1, $2, $3, $4::jsonb, now())",
            events,
        )
        # Queue order = insertion order: next_attempt_at grows by a microsecond per row.
        await connection.executemany(
            "INSERT INTO outbox_messages (id, kind, payload, status, attempts, next_attempt_at,"
            " created_at) VALUES ($1, $2, $3::jsonb, 'pending', 0,"
            " now() - interval '1 hour' + make_interval(secs => $4::float8 / 1e6), now())",
            [(uuid.uuid4(), kind, payload, index) for index, (kind, payload) in enumerate(rows)],
        )
        await connection.execute("ANALYZE outbox_messages")
        return labels
    finally:
        await connection.close()


# --- measuring ---------------------------------------------------------------------------------

_PROGRESS = """
SELECT CASE WHEN m.kind = 'email' THEN 'email'
            WHEN e.url LIKE '%/slow/%' THEN 'slow' ELSE 'fast' END AS label,
       count(*) FILTER (WHERE m.status = 'sent') AS sent,
       count(*) FILTER (WHERE m.status <> 'sent') AS unsent,
       min(m.sent_at) AS first_sent, max(m.sent_at) AS last_sent
FROM outbox_messages m
LEFT JOIN webhook_endpoints e ON e.id = (m.payload ->> 'endpoint_id')::uuid
GROUP BY 1
"""


@dataclass
class Result:
    workers: int
    scenario: str
    rates: dict[str, float]
    sent: dict[str, int]
    queued: dict[str, int]
    seconds: float


def _worker_env(dsn_sqlalchemy: str, smtp_port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.isupper() or key in ("PATH", "HOME", "LANG", "TMPDIR")
    }
    env.update(
        ENVIRONMENT="dev",
        DATABASE_URL=dsn_sqlalchemy,
        REDIS_URL=REDIS_URL,
        EMAIL_BACKEND="smtp",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        WEBHOOKS_ALLOW_PRIVATE="true",
        LOG_LEVEL="WARNING",
        PUBLIC_BASE_URL="https://track.example",
        # PostgreSQL here allows 100 connections, shared: 4 workers stay within 40.
        DB_POOL_SIZE="10",
    )
    return env


def _worker_command(source: Path | None) -> list[str]:
    """`shiptrack worker`, or the same CLI from another checkout's source tree (for "before")."""
    if source is None:
        return [str(SHIPTRACK), "worker"]
    start = "import sys; from backend.cli import main; sys.argv = ['shiptrack', 'worker']; main()"
    return [sys.executable, "-c", start]


async def _run_scenario(
    dsn: str,
    env: dict[str, str],
    workers: int,
    scenario: str,
    queued: dict[str, int],
    deadline: float,
    source: Path | None,
) -> Result:
    processes = [
        subprocess.Popen(_worker_command(source), env=env, cwd=source or ROOT)  # noqa: S603, ASYNC220
        for _ in range(workers)
    ]
    started = time.monotonic()
    connection = await asyncpg.connect(dsn)
    try:
        while True:
            await asyncio.sleep(0.5)
            progress = {row["label"]: row for row in await connection.fetch(_PROGRESS)}
            finished = all(
                progress[label]["unsent"] == 0 for label in ("email", "fast") if queued[label]
            )
            if finished or time.monotonic() - started > deadline:
                break
        scenario_end = await connection.fetchval("SELECT now()")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        await connection.close()
    first_of_any = min(row["first_sent"] for row in progress.values() if row["first_sent"])
    rates: dict[str, float] = {}
    sent: dict[str, int] = {}
    for label, row in progress.items():
        sent[label] = row["sent"]
        if label == "slow":
            window = (scenario_end - first_of_any).total_seconds()
            rates[label] = row["sent"] / window if window > 0 else 0.0
        elif row["sent"] > 1:
            window = (row["last_sent"] - row["first_sent"]).total_seconds()
            rates[label] = (row["sent"] - 1) / window if window > 0 else 0.0
    return Result(workers, scenario, rates, sent, queued, time.monotonic() - started)


def _row(result: Result) -> str:
    def cell(label: str) -> str:
        if not result.queued.get(label):
            return "-"
        rate = result.rates.get(label, 0.0)
        done = result.sent.get(label, 0)
        suffix = "" if done == result.queued[label] or label == "slow" else " (unfinished)"
        return f"{rate:.0f}{suffix}" if rate >= 10 else f"{rate:.1f}{suffix}"

    return (
        f"| {result.workers} | {result.scenario} | {cell('email')} | {cell('fast')} | "
        f"{cell('slow')} | {result.seconds:.1f} |"
    )


async def main(arguments: argparse.Namespace) -> None:
    database = f"shiptrack_outbox_rate_{os.getpid()}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{database}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{database}"')
    ports: Any = multiprocessing.get_context("spawn").Queue()
    sinks = multiprocessing.get_context("spawn").Process(target=_run_sinks, args=(ports,))
    sinks.start()
    try:
        smtp_port, http_port = ports.get(timeout=30)
        env = _worker_env(dsn.replace("postgresql://", "postgresql+asyncpg://"), smtp_port)
        subprocess.run([str(SHIPTRACK), "migrate"], env=env, cwd=ROOT, check=True)  # noqa: S603, ASYNC221
        fast, slow = await _setup(dsn, http_port)
        print(  # noqa: T201 - the output of a measurement script
            f"K={arguments.count}, deadline {arguments.deadline:g} s, "
            f"workers from {arguments.source or f'git {_git_head()}'}\n\n"
            "| workers | scenario | emails/s | fast webhooks/s | 2 s webhooks/s | run s |\n"
            "|---|---|---|---|---|---|",
            flush=True,
        )
        for workers in arguments.workers:
            for scenario in ("emails", "mixed"):
                queued = await _fill(dsn, scenario, arguments.count, fast, slow)
                result = await _run_scenario(
                    dsn, env, workers, scenario, queued, arguments.deadline, arguments.source
                )
                print(_row(result), flush=True)  # noqa: T201
    finally:
        sinks.terminate()
        sinks.join(5)
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


def _git_head() -> str:
    described = subprocess.run(  # noqa: S603
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    return described.stdout.strip()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="K: emails (and fast webhooks)")
    parser.add_argument(
        "--workers", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2, 4]
    )
    parser.add_argument("--deadline", type=float, default=90.0, help="seconds per scenario")
    parser.add_argument(
        "--source",
        type=Path,
        help="run the workers from this source tree (e.g. `git archive` of the base) instead",
    )
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
