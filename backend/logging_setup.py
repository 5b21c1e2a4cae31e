"""Logging: readable lines in dev, one JSON object per line elsewhere, the request id on each."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


# Characters that end a line somewhere: control characters (C0, DEL, C1) and the Unicode line
# and paragraph separators. Left in, a request path with %0d%0a could forge a log line.
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return ascii(match.group())[1:-1]  # "\r", "\n", "\x1b", "\u2028"


class ConsoleFormatter(logging.Formatter):
    """One line per record: anything in the message that could start a new line is escaped
    (tracebacks, added after the line, keep their own line breaks)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return _LINE_BREAKING.sub(_escaped, super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    # Attributes every LogRecord has; anything else was passed through `extra=`.
    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
        "message",
        "request_id",
        "asctime",
        "color_message",  # uvicorn's ANSI-coloured duplicate of the message
    }

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(fmt: Literal["console", "json"], level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    # JSON escapes line breaks in strings by itself.
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log would duplicate ours (which carries the request id).
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # httpx logs every request's full URL at INFO, and webhook URLs can carry the receivers'
    # API keys; the dispatcher logs each attempt itself, with the URL's origin only.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
