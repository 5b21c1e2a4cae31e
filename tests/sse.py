"""Reading Server-Sent Events as a browser does: frames of lines up to a blank line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Frame:
    """One SSE frame: the lines up to a blank line."""

    lines: tuple[str, ...]
    id: str | None
    event: str | None
    data: str | None
    retry: str | None
    comments: tuple[str, ...]

    @property
    def is_event(self) -> bool:
        return self.data is not None

    def payload(self) -> dict[str, Any]:
        assert self.data is not None, f"not an event: {self.lines!r}"
        value = json.loads(self.data)
        assert isinstance(value, dict)
        return value


def parse_frame(lines: Sequence[str]) -> Frame:
    """Parse per the HTML Living Standard's event-stream rules (one space after ':' dropped)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    comments: list[str] = []
    for line in lines:
        if line.startswith(":"):
            comments.append(line)
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
    return Frame(
        lines=tuple(lines),
        id=fields.get("id"),
        event=fields.get("event"),
        data="\n".join(data) if data else None,
        retry=fields.get("retry"),
        comments=tuple(comments),
    )
