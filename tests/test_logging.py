"""Log lines cannot be forged: whatever a client puts in a request, one record stays one line."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Literal

import pytest

from backend.main import create_app
from tests.conftest import make_settings, running_client

# Decoded by the server into a real CR LF, then what a forged access line would look like.
FORGED = "2026-12-07 03:00:00,000 INFO    [-] shiptrack.access: GET /admin/export 200 1.0ms"
HOSTILE_PATH = "/t/ST4X%0D%0A" + FORGED.replace(" ", "%20") + "%E2%80%A8%0Anext"
CONSOLE_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +\[[^\]]+\] \S+: ")


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """What the app's logging writes to standard error; the logging set-up is put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield capsys
    root.handlers, root.level = handlers, level


async def access_log_of_hostile_request(
    database_url: str,
    redis_url: str,
    log_format: Literal["console", "json"],
    stderr: pytest.CaptureFixture[str],
) -> list[str]:
    settings = make_settings(database_url, redis_url, log_format=log_format, log_level="INFO")
    async with running_client(create_app(settings)) as client:
        response = await client.get(HOSTILE_PATH)
    assert response.status_code == 404
    return stderr.readouterr().err.splitlines()


async def test_a_path_with_line_breaks_stays_on_one_console_line(
    database_url: str, redis_url: str, stderr: pytest.CaptureFixture[str]
) -> None:
    lines = await access_log_of_hostile_request(database_url, redis_url, "console", stderr)

    assert lines
    assert all(CONSOLE_LINE.match(line) for line in lines), lines
    [access] = [line for line in lines if "] shiptrack.access: GET /t/ST4X" in line]
    assert "/t/ST4X\\r\\n2026-12-07 03:00:00,000 INFO" in access
    assert access.endswith("\\u2028\\nnext 404 " + access.rsplit(" ", 1)[1])
    assert not any(line.startswith(FORGED) for line in lines)


async def test_a_path_with_line_breaks_stays_in_one_json_record(
    database_url: str, redis_url: str, stderr: pytest.CaptureFixture[str]
) -> None:
    lines = await access_log_of_hostile_request(database_url, redis_url, "json", stderr)

    records = [json.loads(line) for line in lines]  # every line is a whole record
    [access] = [r for r in records if r["logger"] == "shiptrack.access" and "/t/ST4X" in r["msg"]]
    assert access["msg"].startswith("GET /t/ST4X\r\n" + FORGED + "\u2028\nnext 404 ")
    assert access["status"] == 404
