"""Dates in words for messages and pages to people: the one place that writes them.

In UTC: neither an email nor the tracking page (no JavaScript) can know the reader's zone.
"""

from __future__ import annotations

from datetime import UTC, date, datetime


def human_day(moment: datetime, *, today: date | None = None) -> str:
    """'Wednesday 25 November 2026'; without the year when it is `today`'s (if given)."""
    moment = moment.astimezone(UTC)
    day = f"{moment:%A} {moment.day} {moment:%B}"
    return day if today is not None and moment.year == today.year else f"{day} {moment.year}"


def human_time(moment: datetime) -> str:
    """'14:05 UTC'."""
    return f"{moment.astimezone(UTC):%H:%M} UTC"


def human_moment(moment: datetime, *, abbreviated: bool = False) -> str:
    """'Wednesday 25 November 2026, 14:05 UTC', or abbreviated 'Wed 25 Nov 2026, 14:05 UTC'."""
    if not abbreviated:
        return f"{human_day(moment)}, {human_time(moment)}"
    moment = moment.astimezone(UTC)
    return f"{moment:%a} {moment.day} {moment:%b %Y}, {human_time(moment)}"


def relative_days(days: int) -> str:
    """'today', 'tomorrow', 'yesterday', 'in 3 days' or '3 days ago'."""
    if days == 0:
        return "today"
    if days == 1:
        return "tomorrow"
    if days == -1:
        return "yesterday"
    return f"in {days} days" if days > 0 else f"{-days} days ago"
