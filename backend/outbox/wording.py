"""Dates in words for messages to people (in UTC: a message cannot know the reader's zone)."""

from __future__ import annotations

from datetime import UTC, datetime


def human_day(moment: datetime) -> str:
    """'Wednesday 25 November 2026'."""
    moment = moment.astimezone(UTC)
    return f"{moment:%A} {moment.day} {moment:%B %Y}"


def human_moment(moment: datetime) -> str:
    """'Wednesday 25 November 2026, 14:05 UTC'."""
    return f"{human_day(moment)}, {moment.astimezone(UTC):%H:%M} UTC"
